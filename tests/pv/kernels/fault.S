/* fault: reads an unmapped address (virtual 0x10) at "faulting". */
.include "xen.inc"
  .text
  .globl _start, faulting
_start:
faulting:
  movabs 0x10, %rax
  jmp faulting
