/* callbacks: register callbacks both ways; each result goes to results[]
   in order, then poweroff. callback_op(register, event), (register,
   syscall with mask_events), (register, non-canonical), (register, type 9),
   (unregister, event), set_callbacks(event, failsafe, syscall). */
.include "xen.inc"
  .text
  .globl _start, on_event, on_failsafe, on_syscall, results
_start:
  lea results(%rip), %rbx
  .irp arg, reg_event, reg_syscall, reg_bad, reg_unknown
  mov $0, %edi
  lea \arg(%rip), %rsi
  HCALL callback_op
  mov %rax, (%rbx)
  add $8, %rbx
  .endr
  mov $1, %edi
  lea unreg_event(%rip), %rsi
  HCALL callback_op
  mov %rax, (%rbx)
  add $8, %rbx
  lea on_event(%rip), %rdi
  lea on_failsafe(%rip), %rsi
  lea on_syscall(%rip), %rdx
  HCALL set_callbacks
  mov %rax, (%rbx)
  SHUTDOWN $0
on_event:
on_failsafe:
on_syscall:
  SHUTDOWN $3

  .data
  .p2align 3
reg_event:   .word 0, 0
  .long 0
  .quad on_event
reg_syscall: .word 2, 1
  .long 0
  .quad on_syscall
reg_bad:     .word 0, 0
  .long 0
  .quad 0x0000800000000000
reg_unknown: .word 9, 0
  .long 0
  .quad on_event
unreg_event: .word 0, 0
results: .fill 6, 8, 0x55
