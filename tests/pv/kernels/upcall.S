/* upcall: an event channel offered to dom0 (alloc_unbound, remote 0), the
   event callback registered, then SCHEDOP_block until the handler has seen
   NR events on that port. Prints "upcall port <p>", then "upcall <n>" from
   the handler for each event, "upcall ok" and powers off; "upcall FAIL" and
   crash when a step fails. The cmdline: optional "r" (register vcpu_info in
   a frame of ours first) and "s" (spin with events unmasked instead of
   blocking), then optionally NR in decimal (else 1). */
.include "events.inc"
  .text
  .globl _start, seen, on_event
_start:
  mov %rsi, %r12                        /* start_info */
  lea 128(%r12), %rsi                   /* cmd_line: ["r"] [a decimal NR] */
0:
  cmpb $'r', (%rsi)
  jne 5f
  movb $1, register(%rip)
  inc %rsi
  jmp 0b
5:
  cmpb $'s', (%rsi)
  jne 6f
  movb $1, spin(%rip)
  inc %rsi
  jmp 0b
6:
  xor %eax, %eax
1:
  movzbl (%rsi), %ecx
  sub $'0', %ecx
  cmp $9, %ecx
  ja 2f
  imul $10, %rax
  add %rcx, %rax
  inc %rsi
  jmp 1b
2:
  test %rax, %rax
  jz 3f
  mov %rax, wanted(%rip)
3:
  MAP_SHARED_INFO
  test %rax, %rax
  jnz fail
  cmpb $0, register(%rip)
  je 4f
  REGISTER_VCPU_INFO vipage, 128       /* events then arrive in our own frame */
  test %rax, %rax
  jnz fail
4:
  REGISTER_EVENT_CALLBACK on_event
  test %rax, %rax
  jnz fail
  movw $0x7ff0, arg(%rip)               /* dom = DOMID_SELF */
  movw $0, arg+2(%rip)                  /* remote_dom = 0 */
  mov $EVTCHNOP_alloc_unbound, %edi
  lea arg(%rip), %rsi
  HCALL event_channel_op
  test %rax, %rax
  jnz fail
  mov arg+4(%rip), %eax
  mov %rax, port(%rip)
  lea portmsg(%rip), %rsi
  mov $(portmsg_end - portmsg), %edx
  call print_num
  cmpb $0, spin(%rip)
  je wait
  mov vi_ptr(%rip), %rax
  movb $0, 1(%rax)                      /* evtchn_upcall_mask = 0: events on */
7:
  mov seen(%rip), %rax                  /* spin: the upcall interrupts this loop */
  cmp wanted(%rip), %rax
  jb 7b
  jmp done
wait:
  BLOCK
  mov seen(%rip), %rax
  cmp wanted(%rip), %rax
  jb wait
done:
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

port_event:                             /* %edi = the port that fired */
  cmp port(%rip), %rdi
  jne 1f
  incq seen(%rip)
  mov seen(%rip), %rax
  lea evmsg(%rip), %rsi
  mov $(evmsg_end - evmsg), %edx
  call print_num
1:
  ret

  EVENT_HANDLER on_event, port_event
  PRINT_NUM_FN print_num

  .data
  EVENT_DATA
arg: .quad 0
port: .quad 0
seen: .quad 0
wanted: .quad 1
register: .byte 0
spin: .byte 0
  .p2align 12
vipage: .fill 4096, 1, 0
portmsg: .ascii "upcall port "
portmsg_end:
evmsg: .ascii "upcall "
evmsg_end:
ok: .ascii "upcall ok\n"
ok_end:
failmsg: .ascii "upcall FAIL\n"
failmsg_end:
