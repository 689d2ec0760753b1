/* trapbench: %r12 (set by the harness) int3 traps, each bounced to a #BP
   handler that returns with HYPERVISOR_iret; then poweroff. */
.include "xen.inc"
  .text
  .globl _start
_start:
  lea traps(%rip), %rdi
  HCALL set_trap_table
1: int3
  dec %r12
  jnz 1b
  SHUTDOWN $0
h_bp:
  pop %rcx
  pop %r11
  pushq $0
  jmp hypercall_page + 32 * iret
  .data
  .p2align 3
traps:
  .byte 3, 0
  .word 0xe033
  .long 0
  .quad h_bp
  .quad 0, 0
