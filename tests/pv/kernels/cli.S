/* cli: a privileged instruction, which a ring-3 PV kernel may not run. */
.include "xen.inc"
  .text
  .globl _start, privileged
_start:
privileged:
  cli
  jmp privileged
