/* ptupdate: page-table updates Xen refuses, and one it allows.
   Prints "ptupdate ok" and powers off when every result is as Xen's;
   else prints "ptupdate FAIL" with the step number and crashes. */
.include "xen.inc"
.set VB, 0xffffffff80000000
.set SPARE, 0xffffffff800f0000          /* a mapped page nothing uses (pfn 240) */
.set P_RW_U, 7
.set P_U, 5

.macro UVM val
  movabs $SPARE, %rdi
  mov \val, %rsi
  xor %edx, %edx
  HCALL update_va_mapping
.endm

.macro EXPECT rc, step
  cmp \rc, %rax
  movb $'0' + \step, fail_step(%rip)
  jne fail
.endm

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  movabs $VB, %r13
  mov 88(%r12), %r14                    /* pt_base: the L4's VA */
  sub %r13, %r14                        /* = pfn << 12 (a pvxen mfn is its pfn) */
  /* 1: the L4 mapped writable: refused, a page table is never writable */
  lea P_RW_U(%r14), %rbx
  UVM %rbx
  EXPECT $-22, 1
  /* 2: a frame that is not ours: refused */
  movabs $(0x100000 << 12) | P_RW_U, %rbx
  UVM %rbx
  EXPECT $-22, 2
  /* 3: the L4 read-only: allowed, and its first entry reads through it */
  lea P_U(%r14), %rbx
  UVM %rbx
  EXPECT $0, 3
  movabs $SPARE, %rax
  mov 0xff8(%rax), %rbx                 /* L4 slot 511 maps VIRT_BASE */
  test $1, %rbx
  movb $'4', fail_step(%rip)
  jz fail
  /* 5: an own data page writable: allowed; a store through it lands there */
  lea target(%rip), %rbx
  sub %r13, %rbx
  or $P_RW_U, %rbx
  UVM %rbx
  EXPECT $0, 5
  movabs $SPARE, %rax
  movq $0x55aa, (%rax)
  cmpq $0x55aa, target(%rip)
  movb $'6', fail_step(%rip)
  jne fail
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
ok: .ascii "ptupdate ok\n"
ok_end:
  .data
failmsg: .ascii "ptupdate FAIL "
fail_step: .ascii "?\n"
failmsg_end:
  .p2align 12
target: .quad 0
  .p2align 12
