/* smp: a 2-vCPU PV kernel (vcpus = 2). vCPU 0 checks the refusals of
   vcpu_op (xen/common/domain.c common_vcpu_op, xen/arch/x86/domain.c
   arch_set_info_guest), brings vCPU 1 up with VCPUOP_initialise (a struct
   vcpu_guest_context: its own stack, the same L4, its own event callback)
   and VCPUOP_up, and blocks until vCPU 1's IPI. vCPU 1 prints, binds its
   own VIRQ_TIMER and takes a timer upcall, sets a flag, sends the IPI
   (EVTCHNOP_bind_ipi port of vCPU 0) and waits for vCPU 0's IPI back, then
   goes down (VCPUOP_down of itself); vCPU 0 sees VCPUOP_is_up go 1 -> 0,
   brings it up again (it resumes after its VCPUOP_down, IPIs and goes down
   again), then prints "smp ok" and powers off. A failed check prints "smp FAIL <letter>".
   cmdline "s": vCPU 1 shuts the domain down (poweroff) while vCPU 0 is
   blocked. cmdline "w": both stay (vCPU 1 spins, vCPU 0 blocks) for xl
   vcpu-list / vcpu-pin; cmdline "b": vCPU 0 offers an unbound port for
   dom0, moves it to vCPU 1 (EVTCHNOP_bind_vcpu) and vCPU 1 waits for it;
   cmdline "n": every vCPU up (vCPUs 2.. block for good), "vcpus up N";
   cmdline "p": 1000 IPI round trips, their mean printed;
   cmdline "r": vCPU 0 registers vCPU 1's vcpu_info in a page of its own
   before bringing it up, and vCPU 1's events arrive there. */
.include "events.inc"
.set VCPUOP_initialise, 0
.set VCPUOP_up, 1
.set VCPUOP_down, 2
.set VCPUOP_is_up, 3
.set VCPUOP_set_singleshot_timer, 8
.set EVTCHNOP_bind_ipi, 7
.set EVTCHNOP_bind_vcpu, 8
.set SCHEDOP_yield, 0
/* struct vcpu_guest_context (arch-x86/xen-x86_64.h), 5168 bytes */
.set CTX_FLAGS, 512
.set CTX_RDI, 520 + 14 * 8
.set CTX_RIP, 648
.set CTX_CS, 656
.set CTX_RFLAGS, 664
.set CTX_RSP, 680 - 8
.set CTX_SS, 680
.set CTX_GDT_ENTS, 4960
.set CTX_KERNEL_SS, 4968
.set CTX_KERNEL_SP, 4976
.set CTX_CR1, 4984 + 8
.set CTX_CR3, 4984 + 24
.set CTX_EVENT_CB, 5112
.set VGCF_in_kernel, 4
.set VI1, SI + 64                       /* vcpu_info[1] in shared_info */

.macro VOP cmd, vcpu, arg
  mov $\cmd, %edi
  mov $\vcpu, %esi
  lea \arg(%rip), %rdx
  HCALL vcpu_op
.endm

/* %rax must be \val, else "smp FAIL \letter" */
.macro EXPECT val, letter
  cmp $\val, %rax
  je .Lok\@
  movb $\letter, failno(%rip)
  jmp fail
.Lok\@:
.endm

/* wait, blocked, until \flag is set: events masked while looking (vcpu_info
   at *\viptr), SCHEDOP_block unmasks them and returns once one is pending */
.macro WAIT flag, viptr
.Lw\@:
  mov \viptr(%rip), %rax
  movb $1, 1(%rax)                      /* evtchn_upcall_mask */
  cmpq $0, \flag(%rip)
  jne .Ld\@
  BLOCK
  jmp .Lw\@
.Ld\@:
.endm

/* evtchn_op(\cmd, &\arg) */
.macro EVOP cmd, arg
  mov $\cmd, %edi
  lea \arg(%rip), %rsi
  HCALL event_channel_op
.endm

/* The 2-level upcall of one vCPU (vcpu_info at *\viptr): the ports in
   the quad \mine are this vCPU's (word 0 only); \invert: all but those */
.macro SMP_HANDLER name, viptr, mine, on_port, invert
\name:
  pop %rcx
  pop %r11
  push %rax; push %rbx; push %rcx; push %rdx; push %rsi; push %rdi
  push %r10; push %r11; push %r12
  movabs $SI, %r12
  mov \viptr(%rip), %r10
1:
  movb $0, (%r10)                       /* evtchn_upcall_pending = 0 */
  xor %eax, %eax
  xchg %rax, 8(%r10)                    /* evtchn_pending_sel */
  test $1, %al
  jz 4f
3:
  mov 2048(%r12), %rdx
  mov 2560(%r12), %rsi
  not %rsi
  and %rsi, %rdx
  mov \mine(%rip), %rbx
  .if \invert
  not %rbx
  .endif
  and %rbx, %rdx
  jz 1b
  bsf %rdx, %rcx
  lock btr %rcx, 2048(%r12)
  mov %rcx, %rdi
  call \on_port
  jmp 3b
4:
  pop %r12; pop %r11; pop %r10
  pop %rdi; pop %rsi; pop %rdx; pop %rcx; pop %rbx; pop %rax
  pushq $0                              /* iret flags */
  jmp hypercall_page + 32 * iret
.endm

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  mov 128(%r12), %al                    /* cmdline[0]: the mode */
  mov %al, mode(%rip)
  MAP_SHARED_INFO
  REGISTER_EVENT_CALLBACK handler0
  movl $0, bipi(%rip)                   /* bind_ipi(vcpu 0) */
  EVOP EVTCHNOP_bind_ipi, bipi
  EXPECT 0, 'A'
  mov bipi+4(%rip), %eax
  mov %rax, ipi0(%rip)
  movl $1, bipi(%rip)                   /* bind_ipi(vcpu 1) */
  EVOP EVTCHNOP_bind_ipi, bipi
  EXPECT 0, 'B'
  mov bipi+4(%rip), %eax
  mov %rax, ipi1(%rip)
  bts %rax, mine1(%rip)
  VOP VCPUOP_is_up, 1, scratch          /* down at boot */
  EXPECT 0, 'D'
  VOP VCPUOP_up, 1, scratch             /* not initialised: -EINVAL */
  EXPECT -22, 'F'
  cmpb $'n', mode(%rip)                 /* (vcpus = 2 but there) */
  je 1f
  movl $2, bipi(%rip)                   /* no vCPU 2: -ENOENT */
  EVOP EVTCHNOP_bind_ipi, bipi
  EXPECT -2, 'C'
  VOP VCPUOP_is_up, 2, scratch          /* vcpuid >= max_vcpus */
  EXPECT -2, 'E'
  VOP VCPUOP_initialise, 2, ctx
  EXPECT -2, 'G'
1:
  VOP VCPUOP_initialise, 0, ctx         /* the builder's: -EEXIST */
  EXPECT -17, 'H'

  /* vCPU 1's context: kernel mode, Xen's flat selectors, its own stack */
  movq $VGCF_in_kernel, ctx+CTX_FLAGS(%rip)
  lea ap_entry(%rip), %rax
  mov %rax, ctx+CTX_RIP(%rip)
  movw $0xe033, ctx+CTX_CS(%rip)        /* FLAT_KERNEL_CS64 */
  movq $0x200, ctx+CTX_RFLAGS(%rip)
  lea ap_stack_top(%rip), %rax
  mov %rax, ctx+CTX_RSP(%rip)
  mov %rax, ctx+CTX_KERNEL_SP(%rip)
  movw $0xe02b, ctx+CTX_SS(%rip)        /* FLAT_KERNEL_SS64 */
  movq $0xe02b, ctx+CTX_KERNEL_SS(%rip)
  movq $1, ctx+CTX_RDI(%rip)
  mov 88(%r12), %rax                    /* start_info.pt_base: the L4's VA */
  movabs $VB, %rdx
  sub %rdx, %rax                        /* its pfn << 12 (mfn = pfn here) */
  mov %rax, ctx+CTX_CR3(%rip)
  lea handler1(%rip), %rax
  mov %rax, ctx+CTX_EVENT_CB(%rip)

  /* refused contexts (nothing changes): a non-canonical rip */
  mov ctx+CTX_RIP(%rip), %r13
  movabs $0x0000800000000000, %rax
  mov %rax, ctx+CTX_RIP(%rip)
  VOP VCPUOP_initialise, 1, ctx
  EXPECT -22, 'I'
  mov %r13, ctx+CTX_RIP(%rip)
  /* an L4 that is not the domain's frame */
  mov ctx+CTX_CR3(%rip), %r13
  movabs $0x3fff0000000, %rax
  mov %rax, ctx+CTX_CR3(%rip)
  VOP VCPUOP_initialise, 1, ctx
  EXPECT -22, 'J'
  /* an L4 that is a data page of ours (mapped writable): not typable */
  lea ap_stack(%rip), %rax
  movabs $VB, %rdx
  sub %rdx, %rax
  mov %rax, ctx+CTX_CR3(%rip)
  VOP VCPUOP_initialise, 1, ctx
  EXPECT -22, 'K'
  mov %r13, ctx+CTX_CR3(%rip)
  /* user mode without a user L4 */
  movq $0, ctx+CTX_FLAGS(%rip)
  VOP VCPUOP_initialise, 1, ctx
  EXPECT -22, 'L'
  movq $VGCF_in_kernel, ctx+CTX_FLAGS(%rip)
  /* a GDT too large (8192 entries > FIRST_RESERVED_GDT_ENTRY) */
  movq $8192, ctx+CTX_GDT_ENTS(%rip)
  VOP VCPUOP_initialise, 1, ctx
  EXPECT -22, 'M'
  movq $0, ctx+CTX_GDT_ENTS(%rip)
  VOP VCPUOP_is_up, 1, scratch
  EXPECT 0, 'N'

  VOP VCPUOP_initialise, 1, ctx
  EXPECT 0, 'O'
  VOP VCPUOP_initialise, 1, ctx         /* twice: -EEXIST */
  EXPECT -17, 'P'
  VOP VCPUOP_is_up, 1, scratch          /* initialised, still down */
  EXPECT 0, 'Q'
  cmpb $'b', mode(%rip)
  jne 1f
  call offer_port
1:
  cmpb $'r', mode(%rip)
  jne 1f
  call register_vi1
1:
  VOP VCPUOP_up, 1, scratch
  EXPECT 0, 'R'
  WAIT got0, vi0_ptr                         /* blocked; vCPU 1 runs */
  cmpq $1, ap_flag(%rip)
  jne fail_s
  VOP VCPUOP_is_up, 1, scratch
  EXPECT 1, 'T'
  cmpb $'s', mode(%rip)
  je forever
  cmpb $'n', mode(%rip)
  jne 7f
  call all_up
  jmp forever
7:
  cmpb $'w', mode(%rip)
  jne 2f
  PRINT waitmsg, $(waitmsg_end - waitmsg)
forever:
  WAIT never, vi0_ptr
2:
  cmpb $'p', mode(%rip)
  jne 6f
  call ping_pong
6:
  mov ipi1(%rip), %eax                  /* the IPI to vCPU 1 */
  mov %eax, sendp(%rip)
  EVOP EVTCHNOP_send, sendp
  EXPECT 0, 'U'
  mov $2000000, %r13
3:
  VOP VCPUOP_is_up, 1, scratch
  test %rax, %rax
  jz 4f
  mov $SCHEDOP_yield, %edi
  xor %esi, %esi
  HCALL sched_op
  dec %r13
  jnz 3b
  movb $'V', failno(%rip)
  jmp fail
4:
  cmpq $0, ap_back(%rip)                /* second time down: done */
  jne 5f
  movq $0, got0(%rip)
  VOP VCPUOP_up, 1, scratch             /* up again: it resumes after its down */
  EXPECT 0, 'Z'
  WAIT got0, vi0_ptr
  cmpq $1, ap_back(%rip)
  jne fail_s
  mov $2000000, %r13
  jmp 3b
5:
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail_s:
  movb $'S', failno(%rip)
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

/* cmdline "p": PINGS IPI round trips vCPU 0 -> 1 -> 0, each side blocked
   in between; prints the mean in ns (vCPU 0's vcpu_time_info) */
.set PINGS, 1000
ping_pong:
  call read_time
  mov %rax, %r14
  mov $PINGS, %r15
1:
  movq $0, got0(%rip)
  mov ipi1(%rip), %eax
  mov %eax, sendp(%rip)
  EVOP EVTCHNOP_send, sendp
  EXPECT 0, 'p'
  WAIT got0, vi0_ptr
  dec %r15
  jnz 1b
  call read_time
  sub %r14, %rax
  xor %edx, %edx
  mov $PINGS, %ecx
  div %rcx
  lea pingmsg(%rip), %rsi
  mov $(pingmsg_end - pingmsg), %edx
  call print_num
  ret

pong:                                   /* vCPU 1's side */
  mov $PINGS, %r15
1:
  WAIT got1, vi1_ptr
  movq $0, got1(%rip)
  EVOP EVTCHNOP_send, sendp1
  EXPECT 0, 'q'
  dec %r15
  jnz 1b
  ret

/* cmdline "n": vCPUs 2 .. max_vcpus-1 up too (found by VCPUOP_is_up's
   -ENOENT), each blocked for good on a small stack of its own */
all_up:
  mov $2, %r13
1:
  mov $VCPUOP_is_up, %edi
  mov %r13d, %esi
  lea scratch(%rip), %rdx
  HCALL vcpu_op
  cmp $-2, %rax
  je 2f
  lea ap_idle(%rip), %rax
  mov %rax, ctx+CTX_RIP(%rip)
  mov %r13, %rax
  shl $10, %rax
  lea idle_stacks(%rip), %rdx
  add %rdx, %rax                        /* idle_stacks + 1024 * n */
  mov %rax, ctx+CTX_RSP(%rip)
  mov %rax, ctx+CTX_KERNEL_SP(%rip)
  mov %r13, ctx+CTX_RDI(%rip)
  movq $0, ctx+CTX_EVENT_CB(%rip)
  mov $VCPUOP_initialise, %edi
  mov %r13d, %esi
  lea ctx(%rip), %rdx
  HCALL vcpu_op
  EXPECT 0, 'n'
  mov $VCPUOP_up, %edi
  mov %r13d, %esi
  lea scratch(%rip), %rdx
  HCALL vcpu_op
  EXPECT 0, 'o'
  inc %r13
  cmp $32, %r13
  jb 1b
2:
  mov %r13, %rax
  lea allmsg(%rip), %rsi
  mov $(allmsg_end - allmsg), %edx
  call print_num
  ret

ap_idle:                                /* vCPUs 2..: blocked, no events */
  BLOCK
  jmp ap_idle

/* cmdline "r": vCPU 1's vcpu_info moved by vCPU 0 (VCPUOP_register_vcpu_info
   of another vCPU, as Linux's xen_vcpu_setup does before it is up) */
register_vi1:
  lea vipage(%rip), %rax
  movabs $VB, %rdx
  sub %rdx, %rax
  shr $12, %rax
  mov %rax, vi_reg(%rip)
  movl $64, vi_reg+8(%rip)
  mov $VCPUOP_register_vcpu_info, %edi
  mov $1, %esi
  lea vi_reg(%rip), %rdx
  HCALL vcpu_op
  EXPECT 0, 'r'
  mov $VCPUOP_register_vcpu_info, %edi  /* once per vCPU: -EBUSY */
  mov $1, %esi
  lea vi_reg(%rip), %rdx
  HCALL vcpu_op
  EXPECT -16, 's'
  lea vipage+64(%rip), %rax
  mov %rax, vi1_ptr(%rip)               /* ... or where vCPU 0 registered it */
  ret

/* cmdline "b": alloc_unbound(DOMID_SELF, remote 0), bind_vcpu(port, 1) */
offer_port:
  movw $0x7ff0, unb(%rip)               /* DOMID_SELF */
  movw $0, unb+2(%rip)
  EVOP EVTCHNOP_alloc_unbound, unb
  EXPECT 0, 'W'
  mov unb+4(%rip), %eax
  mov %rax, bport(%rip)
  bts %rax, mine1(%rip)
  mov %eax, bvcpu(%rip)
  movl $5, bvcpu+4(%rip)                /* no vCPU 5: -ENOENT */
  EVOP EVTCHNOP_bind_vcpu, bvcpu
  EXPECT -2, 'X'
  movl $1, bvcpu+4(%rip)
  EVOP EVTCHNOP_bind_vcpu, bvcpu
  EXPECT 0, 'Y'
  mov bport(%rip), %rax
  lea portmsg(%rip), %rsi
  mov $(portmsg_end - portmsg), %edx
  call print_num
  ret

/* vCPU 1: entered by Xen in kernel mode, rsp = ap_stack_top, rdi = 1 */
ap_entry:
  cmp $1, %rdi
  jne fail_ap
  lea ap_stack_top(%rip), %rax
  cmp %rax, %rsp
  jne fail_ap
  PRINT apmsg, $(apmsg_end - apmsg)
  movl $0, bvirq(%rip)                  /* bind_virq(VIRQ_TIMER, vcpu 1) */
  movl $1, bvirq+4(%rip)
  EVOP EVTCHNOP_bind_virq, bvirq
  EXPECT 0, 'a'
  mov bvirq+8(%rip), %eax
  mov %rax, timer1(%rip)
  bts %rax, mine1(%rip)
  VOP VCPUOP_set_singleshot_timer, 0, sshot   /* another vCPU's: -EINVAL */
  EXPECT -22, 'b'
  VOP VCPUOP_set_singleshot_timer, 1, sshot   /* in the past: VIRQ_TIMER now */
  EXPECT 0, 'c'
  WAIT gottimer1, vi1_ptr
  cmpb $'b', mode(%rip)
  jne 1f
  WAIT gotb, vi1_ptr                        /* dom0's event, moved to us */
  PRINT bmsg, $(bmsg_end - bmsg)
1:
  movq $1, ap_flag(%rip)
  mov ipi0(%rip), %eax                  /* the IPI to vCPU 0 */
  mov %eax, sendp1(%rip)
  EVOP EVTCHNOP_send, sendp1
  EXPECT 0, 'd'
  cmpb $'s', mode(%rip)
  jne 2f
  SHUTDOWN $0                           /* from vCPU 1: the whole domain */
2:
  cmpb $'n', mode(%rip)
  je 6f
  cmpb $'w', mode(%rip)
  jne 3f
6:
  PRINT spinmsg, $(spinmsg_end - spinmsg)
4:
  jmp 4b                                /* spins: xl vcpu-list shows it running */
3:
  cmpb $'p', mode(%rip)
  jne 5f
  call pong
5:
  WAIT got1, vi1_ptr
  VOP VCPUOP_down, 1, scratch           /* synchronous: we stop here */
  EXPECT 0, 'e'                         /* brought up again: we go on here */
  PRINT backmsg, $(backmsg_end - backmsg)
  movq $1, ap_back(%rip)
  EVOP EVTCHNOP_send, sendp1            /* tell vCPU 0 */
  EXPECT 0, 'f'
  VOP VCPUOP_down, 1, scratch
  movb $'g', failno(%rip)
  jmp fail
fail_ap:
  movb $'z', failno(%rip)
  jmp fail

on_port0:
  cmp ipi0(%rip), %rdi
  jne 1f
  movq $1, got0(%rip)
1:
  ret

on_port1:
  cmp ipi1(%rip), %rdi
  jne 1f
  movq $1, got1(%rip)
1:
  cmp timer1(%rip), %rdi
  jne 2f
  movq $1, gottimer1(%rip)
2:
  cmp bport(%rip), %rdi
  jne 3f
  movq $1, gotb(%rip)
3:
  ret

  SMP_HANDLER handler0, vi0_ptr, mine1, on_port0, 1   /* vCPU 0: every port not vCPU 1's */
  SMP_HANDLER handler1, vi1_ptr, mine1, on_port1, 0
  PRINT_NUM_FN print_num
  READ_TIME_FN read_time

  .data
  EVENT_DATA
  .p2align 3
mode: .quad 0
mine1: .quad 0
ipi0: .quad -1
ipi1: .quad -1
timer1: .quad -1
bport: .quad -1
got0: .quad 0
got1: .quad 0
gottimer1: .quad 0
gotb: .quad 0
never: .quad 0
ap_flag: .quad 0
vi0_ptr: .quad SI
vi1_ptr: .quad VI1                      /* vCPU 1's vcpu_info: shared_info's slot 1 ... */
ap_back: .quad 0
bipi: .long 0, 0                        /* struct evtchn_bind_ipi: vcpu, port */
bvirq: .long 0, 0, 0                    /* struct evtchn_bind_virq: virq, vcpu, port */
unb: .word 0, 0                         /* struct evtchn_alloc_unbound: dom, remote_dom */
  .long 0                               /* port */
bvcpu: .long 0, 0                       /* struct evtchn_bind_vcpu: port, vcpu */
sendp: .long 0
sendp1: .long 0
  .p2align 3
sshot: .quad 1, 0                       /* struct vcpu_set_singleshot_timer: 1 ns (past) */
scratch: .fill 64, 1, 0
  .p2align 4
ctx: .fill 5168, 1, 0
  .p2align 12
vipage: .fill 4096, 1, 0
idle_stacks: .fill 32 * 1024, 1, 0
  .p2align 4
ap_stack: .fill 8192, 1, 0
ap_stack_top:
ok: .ascii "smp ok\n"
ok_end:
apmsg: .ascii "vcpu1 up\n"
apmsg_end:
bmsg: .ascii "vcpu1 got the moved port\n"
bmsg_end:
backmsg: .ascii "vcpu1 up again\n"
backmsg_end:
spinmsg: .ascii "vcpu1 spinning\n"
spinmsg_end:
waitmsg: .ascii "smp waiting\n"
waitmsg_end:
portmsg: .ascii "upcall port "
portmsg_end:
allmsg: .ascii "vcpus up "
allmsg_end:
pingmsg: .ascii "ipi round trip ns "
pingmsg_end:
failmsg: .ascii "smp FAIL "
failno: .ascii "?\n"
failmsg_end:
