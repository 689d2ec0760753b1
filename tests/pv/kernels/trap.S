/* trap: set_trap_table with #UD and #PF handlers; ud2 and a read of an
   unmapped address each bounce to their handler, which returns with
   HYPERVISOR_iret past the faulting instruction. "trap ok" + poweroff when
   both ran (and #PF had error code 0: a kernel-mode
   fault has PFEC_user clear, as pv_inject_event sets it from the guest's mode), else "trap FAIL" + crash. */
.include "xen.inc"
  .text
  .globl _start, do_ud, do_pf
_start:
  lea traps(%rip), %rdi
  HCALL set_trap_table
  test %rax, %rax
  jnz fail
  mov $0x1234, %r15                     /* must survive both traps */
do_ud:
  ud2
do_pf:
  movabs 0x10, %rax                     /* 10 bytes: 48 a1 imm64 */
  cmpq $2, hits(%rip)
  jne fail
  cmpq $0, pf_err(%rip)
  jne fail
  cmp $0x1234, %r15
  jne fail
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

ud_handler:                             /* rcx, r11, rip, cs, rflags, rsp, ss */
  pop %rcx
  pop %r11
  addq $2, (%rsp)                       /* past ud2 */
  incq hits(%rip)
  pushq $0                              /* iret flags */
  jmp hypercall_page + 32 * iret

pf_handler:                             /* rcx, r11, error code, rip, ... */
  pop %rcx
  pop %r11
  popq pf_err(%rip)
  addq $10, (%rsp)                      /* past the movabs */
  incq hits(%rip)
  pushq $0
  jmp hypercall_page + 32 * iret

  .data
  .p2align 3
traps:                                  /* struct trap_info: vector, flags, cs, address */
  .byte 6, 0
  .word 0xe033
  .long 0
  .quad ud_handler
  .byte 14, 0
  .word 0xe033
  .long 0
  .quad pf_handler
  .quad 0, 0
hits: .quad 0
pf_err: .quad 0
ok: .ascii "trap ok\n"
ok_end:
failmsg: .ascii "trap FAIL\n"
failmsg_end:
