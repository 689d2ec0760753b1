/* gntcopy: GNTTABOP_copy from a PV kernel, done by hypervisord: between two
   of its own frames by gmfn (the bytes arrive), into a frame in use as a page
   table (refused: GNTST_general_error), across a page end (GNTST_bad_copy_arg),
   another domain's frame by gmfn (GNTST_permission_denied), a grant of a
   domain that does not exist (GNTST_bad_domain), several ops in one
   call, and an unreadable op (-EFAULT). Prints "gntcopy ok" or
   "gntcopy FAIL <step>". */
.include "xen.inc"
.include "mm.inc"
.set VB, 0xffffffff80000000
.set DOMID_SELF, 0x7ff0
.set GNTTABOP_copy, 5

/* fill op \n: source {gmfn \su, \sdom, \soff}, dest {gmfn \du, \ddom, \doff}, len */
.macro OPSET n, su, sdom, soff, du, ddom, doff, len, flags=$0
  mov \su, %rax
  mov %rax, ops+40*\n(%rip)
  movw \sdom, ops+40*\n+8(%rip)
  movw \soff, ops+40*\n+10(%rip)
  mov \du, %rax
  mov %rax, ops+40*\n+16(%rip)
  movw \ddom, ops+40*\n+24(%rip)
  movw \doff, ops+40*\n+26(%rip)
  movw \len, ops+40*\n+32(%rip)
  movw \flags, ops+40*\n+34(%rip)        /* GNTCOPY_*_gref, else gmfns */
  movw $99, ops+40*\n+36(%rip)          /* status: must be written */
.endm

.macro COPYOPS count
  mov $GNTTABOP_copy, %edi
  lea ops(%rip), %rsi
  mov \count, %edx
  HCALL grant_table_op
.endm

.macro STATUS n, want, step
  movswq ops+40*\n+36(%rip), %rax
  EXPECT \want, \step
.endm

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  movabs $VB, %r13
  PFN src, %r14
  PFN dst, %r15
  /* 1: 16 bytes from src+0 to dst+8 */
  OPSET 0, %r14, $DOMID_SELF, $0, %r15, $DOMID_SELF, $8, $16
  COPYOPS $1
  EXPECT $0, '1'
  STATUS 0, $0, '1'
  mov src(%rip), %rax
  EXPECT dst+8(%rip), '1'
  mov src+8(%rip), %rax
  EXPECT dst+16(%rip), '1'
  movq dst(%rip), %rax                  /* nothing before the offset */
  EXPECT $0, '1'
  /* 2: into the L4 we run on: refused, and it is unchanged */
  mov 88(%r12), %rbx                    /* start_info.pt_base (VA of the L4) */
  sub %r13, %rbx
  shr $12, %rbx
  OPSET 0, %r14, $DOMID_SELF, $0, %rbx, $DOMID_SELF, $0, $8
  COPYOPS $1
  EXPECT $0, '2'
  STATUS 0, $-1, '2'
  /* 3: offset + len past the page end; 4: another domain's frame by gmfn
     (only DOMID_SELF may copy by frame: permission denied); 5: a grant of a
     domain that does not exist; then one good op after them in the same
     call: each gets its own status */
  OPSET 0, %r14, $DOMID_SELF, $4090, %r15, $DOMID_SELF, $0, $16
  OPSET 1, %r14, $0, $0, %r15, $DOMID_SELF, $0, $8
  OPSET 2, $8, $999, $0, %r15, $DOMID_SELF, $0, $8, $1
  OPSET 3, %r14, $DOMID_SELF, $16, %r15, $DOMID_SELF, $64, $8
  COPYOPS $4
  EXPECT $0, '3'
  STATUS 0, $-10, '3'
  STATUS 1, $-8, '4'
  STATUS 2, $-2, '5'
  STATUS 3, $0, '6'
  mov src+16(%rip), %rax
  EXPECT dst+64(%rip), '6'
  /* 7: the op array unreadable */
  mov $GNTTABOP_copy, %edi
  mov $0x1000, %esi
  mov $1, %edx
  HCALL grant_table_op
  EXPECT $-14, '7'
  VERDICT gntcopy
  .p2align 3
ops: .fill 160, 1, 0
  .p2align 12
src: .quad 0x1122334455667788, 0x99aabbccddeeff00, 0x0123456789abcdef
  .p2align 12
dst: .fill 4096, 1, 0
  .p2align 12
