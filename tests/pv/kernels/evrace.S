/* evrace: consume events as fast as a Linux-like 2-level handler can while
   dom0 sends them, to catch a pending or selector bit lost between the
   load and the store of an emulated locked read-modify-write
   (tests/pv/test_event_race.py).

   NPORTS ports are offered to dom0 (alloc_unbound, remote 0), each
   printed as "evrace port <p>". Upcalls stay masked (as the
   builder left them): the kernel spins on the bits itself, the body of
   Linux's xen_evtchn_do_upcall without the interrupt:
     - `lock btr` of port 0's bit (never bound: a no-op that rewrites
       evtchn_pending[0], the word our ports live in, as a guest clearing
       another port of that word does all the time);
     - evtchn_upcall_pending = 0, `xchg` of evtchn_pending_sel;
     - for each selected word, each pending unmasked bit: `lock btr`, and
       seen[port] += 1 when the bit was set.
   The cmdline "n" leaves out the port-0 rewrite; "m" masks the first port
   (`lock bts` on its evtchn_mask bit; seen[63] = 1 says it is done) and
   unmasks it with EVTCHNOP_unmask (result in seen[62]) on each event on
   the last port but one.
   An event on the last port ends the run: "evrace done", poweroff.
   seen[] (u64 by port, ports < 64) is at the start of its own page,
   `counters`, which the test maps to watch the consumption. */
.include "events.inc"
.set NPORTS, 7
.set EVTCHNOP_unmask, 9                 /* xen/include/public/event_channel.h */
  .text
  .globl _start, counters
_start:
  mov %rsi, %r12                        /* start_info */
  cmpb $'n', 128(%r12)                  /* cmdline "n": no port-0 rewrite */
  jne 0f
  movb $1, nochurn(%rip)
0:
  cmpb $'m', 128(%r12)                  /* cmdline "m": the mask mode */
  jne 0f
  movb $1, maskmode(%rip)
0:
  MAP_SHARED_INFO
  test %rax, %rax
  jnz fail
  xor %ebx, %ebx
1:                                      /* alloc_unbound x NPORTS */
  movw $0x7ff0, arg(%rip)               /* dom = DOMID_SELF */
  movw $0, arg+2(%rip)                  /* remote_dom = 0 */
  movl $0, arg+4(%rip)
  mov $EVTCHNOP_alloc_unbound, %edi
  lea arg(%rip), %rsi
  HCALL event_channel_op
  test %rax, %rax
  jnz fail
  mov arg+4(%rip), %eax
  cmp $64, %eax
  jae fail                              /* seen[] covers word 0 only */
  lea ports(%rip), %rdx
  mov %rax, (%rdx,%rbx,8)
  inc %ebx
  cmp $NPORTS, %ebx
  jb 1b
  mov ports+8*(NPORTS-1)(%rip), %rax
  mov %rax, stop_port(%rip)
  xor %ebx, %ebx
2:
  lea ports(%rip), %rdx
  mov (%rdx,%rbx,8), %rax
  lea portmsg(%rip), %rsi
  mov $(portmsg_end - portmsg), %edx
  push %rbx
  call print_num                        /* "evrace port <p>" */
  pop %rbx
  inc %ebx
  cmp $NPORTS, %ebx
  jb 2b
  movabs $SI, %r12
  mov vi_ptr(%rip), %r10
  lea counters(%rip), %r14              /* seen[] */
  cmpb $0, maskmode(%rip)
  je spin
  mov ports(%rip), %rax
  lock btsq %rax, 2560(%r12)            /* mask the first port */
  movb $1, 8*63(%r14)                   /* seen[63]: "masked", for the test */
spin:
  cmpb $0, nochurn(%rip)
  jne 6f
  lock btrq $0, 2048(%r12)              /* port 0: never pending, the word rewritten */
6:
  movb $0, (%r10)                       /* evtchn_upcall_pending = 0 */
  xor %r13, %r13
  xchg %r13, 8(%r10)                    /* take evtchn_pending_sel */
  test %r13, %r13
  jz spin
3:
  bsf %r13, %rbx                        /* a selected word */
  btr %rbx, %r13
4:
  mov 2048(%r12,%rbx,8), %rdx
  mov 2560(%r12,%rbx,8), %rsi
  not %rsi
  and %rsi, %rdx
  jz 5f
  bsf %rdx, %rcx
  lock btrq %rcx, 2048(%r12,%rbx,8)
  jnc 4b                                /* gone meanwhile: look again */
  mov %rbx, %rax
  shl $6, %rax
  add %rcx, %rax                        /* the port */
  cmp $64, %rax
  jae 4b
  incq (%r14,%rax,8)
  cmp stop_port(%rip), %rax
  je done
  cmpb $0, maskmode(%rip)
  je 4b
  cmp ports+8*(NPORTS-2)(%rip), %rax
  jne 4b
  push %rbx; push %rcx; push %rdx; push %rsi; push %r10; push %r13
  mov ports(%rip), %rax                 /* the trigger: EVTCHNOP_unmask(first port) */
  mov %eax, arg(%rip)
  mov $EVTCHNOP_unmask, %edi
  lea arg(%rip), %rsi
  HCALL event_channel_op
  mov %rax, 8*62(%r14)                  /* seen[62]: its result */
  pop %r13; pop %r10; pop %rsi; pop %rdx; pop %rcx; pop %rbx
  jmp 4b
5:
  test %r13, %r13
  jnz 3b
  jmp spin
done:
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

  PRINT_NUM_FN print_num

  .data
  EVENT_DATA
arg: .quad 0
ports: .fill NPORTS, 8, 0
stop_port: .quad 0
nochurn: .byte 0
maskmode: .byte 0
portmsg: .ascii "evrace port "
portmsg_end:
ok: .ascii "evrace done\n"
ok_end:
failmsg: .ascii "evrace FAIL\n"
failmsg_end:
  .p2align 12
counters: .fill 512, 8, 0               /* seen[port], u64 */
