/* mm_refuse: page-table and memory hypercalls Xen refuses, each with Xen's errno.
   Prints "mm_refuse ok" and powers off when every result is as Xen's; else
   prints "mm_refuse FAIL <step>" and crashes. */
.include "xen.inc"
.include "mm.inc"
.set VB, 0xffffffff80000000
.set SPARE, 0xffffffff800f0000          /* a mapped page nothing uses (pfn 240) */
.set DOMID_SELF, 0x7ff0
.set NOT_OURS, 0x100000                 /* a frame far beyond the domain's */

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  movabs $VB, %r13
  mov 88(%r12), %r14                    /* pt_base: the L4's VA */
  sub %r13, %r14                        /* its machine address (a pvxen mfn is its pfn) */
  lea tbl(%rip), %r15
  sub %r13, %r15                        /* machine address of an ordinary, writable page */
  /* A: an L4 entry naming a frame that is not ours */
  movabs $(NOT_OURS << 12) | 7, %rbx
  lea 8(%r14), %rcx
  MMU %rcx, %rbx
  EXPECT $-22, 'A'
  cmpl $0, done(%rip)
  jne fail
  /* B: an L4 entry in Xen's slots 256..271 */
  lea 256*8(%r14), %rcx
  lea 7(%r15), %rbx
  MMU %rcx, %rbx
  EXPECT $-22, 'B'
  /* C: an L4 entry naming a writable-mapped page: it cannot become an L3 */
  lea 8(%r14), %rcx
  MMU %rcx, %rbx
  EXPECT $-22, 'C'
  /* D: pinning a writable-mapped page as an L1 */
  mov %r15, %rbx
  shr $12, %rbx
  EXT $0, %rbx
  EXPECT $-22, 'D'
  /* E: NEW_BASEPTR to it */
  EXT $5, %rbx
  EXPECT $-22, 'E'
  /* F: unpinning what is not pinned */
  EXT $4, %rbx
  EXPECT $-22, 'F'
  /* G: bad pointers: -EFAULT */
  mov $0x1000, %edi
  mov $1, %esi
  xor %edx, %edx
  mov $DOMID_SELF, %r10d
  HCALL mmu_update
  EXPECT $-14, 'G'
  mov $0x1000, %edi
  mov $1, %esi
  xor %edx, %edx
  mov $DOMID_SELF, %r10d
  HCALL mmuext_op
  EXPECT $-14, 'H'
  /* I: MMU_MACHPHYS_UPDATE of a frame not ours; then of our own */
  movabs $(NOT_OURS << 12) | 1, %rcx
  MMU %rcx, $5
  EXPECT $-22, 'I'
  lea 1(%r15), %rcx
  MMU %rcx, $5
  EXPECT $0, 'J'
  cmpl $1, done(%rip)
  jne fail
  /* K: a PSE (2 MiB) L2 entry: superpages are refused for PV */
  mov 88(%r12), %rax
  mov 0xff8(%rax), %rbx                 /* L4[511] -> the L3 */
  movabs $0x000ffffffffff000, %rcx
  and %rcx, %rbx
  add %r13, %rbx                        /* the L3's VA (tables are mapped read-only) */
  mov 510*8(%rbx), %rbx                 /* L3[510] -> the L2 */
  and %rcx, %rbx
  lea 100*8(%rbx), %rcx
  MMU %rcx, $(0x200 << 12) | 0x87
  EXPECT $-22, 'K'
  /* L: a foreign page owner (dom0) needs privilege */
  lea req(%rip), %rdi
  xor %esi, %esi
  xor %edx, %edx
  xor %r10d, %r10d
  HCALL mmu_update
  EXPECT $-1, 'L'
  /* M: mmuext_op 14 does not exist */
  EXT $14, $0
  EXPECT $-38, 'M'
  /* N: physdev_op(PHYSDEVOP_set_iopl): iopl 4 is invalid, 1 is fine */
  movl $4, iopl(%rip)
  mov $6, %edi
  lea iopl(%rip), %rsi
  HCALL physdev_op
  EXPECT $-22, 'N'
  movl $1, iopl(%rip)
  mov $6, %edi
  lea iopl(%rip), %rsi
  HCALL physdev_op
  EXPECT $0, 'O'
  /* P: a multicall goes on past a failing element and reports each result */
  movabs $SPARE, %rax
  mov %rax, mc+16(%rip)                 /* update_va_mapping(SPARE, L4 | RW) */
  lea 7(%r14), %rax
  mov %rax, mc+24(%rip)
  lea mc(%rip), %rdi
  lea mc(%rip), %rax
  mov %rax, mc+128+16(%rip)             /* the nested one's own list */
  mov $3, %esi
  HCALL multicall
  EXPECT $0, 'P'
  mov mc+8(%rip), %rax
  EXPECT $-22, 'Q'
  mov mc+64+8(%rip), %rax
  EXPECT $0x40013, 'R'                  /* xen_version(XENVER_version): 4.19 */
  mov mc+128+8(%rip), %rax
  EXPECT $-22, 'S'                      /* a multicall inside a multicall */
  /* T: CLEAR_PAGE of a page table is refused; COPY_PAGE from one is fine */
  mov %r14, %rbx
  shr $12, %rbx
  EXT $16, %rbx
  EXPECT $-22, 'T'
  mov %rbx, op+16(%rip)                 /* arg2: src_mfn = the L4 */
  mov %r15, %rbx
  shr $12, %rbx
  EXT $17, %rbx                         /* COPY_PAGE to tbl */
  EXPECT $0, 'U'
  movq $0, op+16(%rip)
  mov 88(%r12), %rax
  mov 0xff8(%rax), %rax
  movb $'U', fail_step(%rip)
  cmp tbl+0xff8(%rip), %rax
  jne fail
  /* V: SET_LDT: more than 8192 entries, or a misaligned base, is refused */
  movq $8193, op+16(%rip)
  EXT $13, $0
  EXPECT $-22, 'V'
  movq $1, op+16(%rip)
  EXT $13, $0x123
  EXPECT $-22, 'V'
  movq $0, op+16(%rip)
  EXT $13, $0
  EXPECT $0, 'W'
  /* Y: update_va_mapping(UVMF_TLB_FLUSH | UVMF_MULTI, unreadable mask): -EFAULT */
  movabs $SPARE, %rdi
  lea tbl(%rip), %rsi
  sub %r13, %rsi
  or $7, %rsi
  mov $0x1001, %edx                     /* mask pointer 0x1000 | UVMF_TLB_FLUSH */
  HCALL update_va_mapping
  EXPECT $-14, 'Y'
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
ok: .ascii "mm_refuse ok\n"
ok_end:
  .data
failmsg: .ascii "mm_refuse FAIL "
fail_step: .ascii "?\n"
failmsg_end:
  .p2align 3
req: .quad 0, 0
op: .long 0, 0
  .quad 0, 0
done: .long 0
iopl: .long 0
  .p2align 3
mc: .quad 14, 0, 0, 0, 0, 0, 0, 0       /* update_va_mapping */
  .quad 17, 0, 0, 0, 0, 0, 0, 0         /* xen_version */
  .quad 13, 0, 0, 1, 0, 0, 0, 0         /* multicall: refused inside one */
  .p2align 12
tbl: .fill 4096, 1, 0
  .p2align 12
