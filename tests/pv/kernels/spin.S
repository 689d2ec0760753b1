/* spin: says so, then loops forever without a hypercall. */
.include "xen.inc"
  .text
  .globl _start
_start:
  PRINT msg, $(msg_end - msg)
1: add %rax, %rcx
  xor %rbx, %rax
  dec %rcx
  jmp 1b
msg: .ascii "spinning\n"
msg_end:
