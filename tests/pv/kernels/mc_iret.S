/* mc_iret: an iret inside a multicall ends the batch (Xen's mc_exit; XSA-213:
   nothing after a privilege-changing element runs unchecked). The batch is
   {iret, console_io "BAD"}: the guest continues at the iret frame's RIP, and
   the console_io never runs. Prints "mc_iret ok" and powers off. */
.include "xen.inc"

  .text
  .globl _start
_start:
  lea bad(%rip), %rax
  mov %rax, mc+64+32(%rip)              /* console_io(CONSOLEIO_write, 4, bad) */
  mov %rsp, %rbx
  /* the iret frame above what the stub pushes (rcx, r11) and the call (rip):
     ..., flags, rip, cs, rflags, rsp, ss */
  push $0xe028                          /* ss: FLAT_KERNEL_SS64, RPL 0 = kernel context */
  push %rbx                             /* rsp */
  push $0x202                           /* rflags */
  push $0xe030                          /* cs: FLAT_KERNEL_CS64, RPL 0: back to kernel mode (do_iret) */
  lea after(%rip), %rax
  push %rax                             /* rip */
  push $0                               /* flags */
  lea mc(%rip), %rdi
  mov $2, %esi
  HCALL multicall
  PRINT bad, $4                         /* the multicall returned: wrong */
  SHUTDOWN $3
after:
  cmp %rbx, %rsp
  jne 1f
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
1:
  PRINT bad, $4
  SHUTDOWN $3
ok: .ascii "mc_iret ok\n"
ok_end:
bad: .ascii "BAD\n"
  .data
  .p2align 3
mc: .quad 23, 0, 0, 0, 0, 0, 0, 0       /* iret */
  .quad 18, 0, 0, 4, 0, 0, 0, 0         /* console_io(0, 4, bad) */
