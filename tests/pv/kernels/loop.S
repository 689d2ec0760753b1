/* loop: %rcx iterations (set by the harness) of a 4-instruction loop, then poweroff. */
.include "xen.inc"
  .text
  .globl _start
_start:
1: add %rax, %rbx
  xor %rdx, %rax
  dec %rcx
  jnz 1b
  SHUTDOWN $0
