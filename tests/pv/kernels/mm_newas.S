/* mm_newas: a new address space built, validated, pinned and entered, as a PV
   kernel does for a new process (Linux's xen_pgd_pin + xen_write_cr3).
   Four pages of the image become L4/L3/L2/L1: written while ordinary, then
   made read-only, pinned and loaded with MMUEXT_NEW_BASEPTR; entries at every
   level are then added with mmu_update. Prints "mm_newas ok" and powers off;
   else "mm_newas FAIL <step>" and crashes. */
.include "xen.inc"
.include "mm.inc"
.set VB, 0xffffffff80000000
.set DOMID_SELF, 0x7ff0
.set NEWVA, 0x8000000000               /* L4 slot 1: only the new tables map it */
.set P_RW_U, 7
.set P_U, 5

/* machine address of the page at symbol \sym into \reg */
.macro MADDR sym, reg
  lea \sym(%rip), \reg
  sub %r13, \reg
.endm

/* update_va_mapping(&\sym, maddr(\sym) | \flags, 0) */
.macro REMAP sym, flags
  lea \sym(%rip), %rdi
  mov %rdi, %rsi
  sub %r13, %rsi
  or \flags, %rsi
  xor %edx, %edx
  HCALL update_va_mapping
.endm

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  movabs $VB, %r13
  mov 88(%r12), %r14                    /* the builder's L4: VA ... */
  mov 0xff8(%r14), %rax                 /* its slot 511 (the kernel) goes in ours too */
  mov %rax, new_l4+0xff8(%rip)
  sub %r13, %r14                        /* ... and machine address */
  /* 1: write the new tables while they are ordinary pages */
  MADDR new_l3, %rax
  or $P_RW_U, %rax
  mov %rax, new_l4+8(%rip)              /* L4[1] -> L3 */
  MADDR new_l2, %rax
  or $P_RW_U, %rax
  mov %rax, new_l3(%rip)                /* L3[0] -> L2 */
  MADDR new_l1, %rax
  or $P_RW_U, %rax
  mov %rax, new_l2(%rip)                /* L2[0] -> L1 */
  MADDR marker, %rax
  or $P_RW_U, %rax
  mov %rax, new_l1(%rip)                /* L1[0] -> marker */
  /* 2: pinning fails while the tables are still mapped writable */
  MADDR new_l4, %rbx
  shr $12, %rbx
  EXT $3, %rbx
  EXPECT $-22, '2'
  /* 3: read-only, then pinned */
  REMAP new_l4, $P_U
  EXPECT $0, '3'
  REMAP new_l3, $P_U
  EXPECT $0, '3'
  REMAP new_l2, $P_U
  EXPECT $0, '3'
  REMAP new_l1, $P_U
  EXPECT $0, '3'
  /* i: NEW_BASEPTR validates an unpinned L4 on the fly (new_guest_cr3); back again */
  EXT $5, %rbx
  EXPECT $0, 'i'
  mov %r14, %rax
  shr $12, %rax
  EXT $5, %rax
  EXPECT $0, 'i'
  EXT $3, %rbx
  EXPECT $0, '4'
  /* 5: a pinned table cannot be made writable again */
  REMAP new_l1, $P_RW_U
  EXPECT $-22, '5'
  /* 6: switch to it, and read and write through the new mapping */
  EXT $5, %rbx
  EXPECT $0, '6'
  movabs $NEWVA, %rax
  movb $'7', fail_step(%rip)
  cmpq $0x12345678, (%rax)
  jne fail
  movq $0xabcdef, 8(%rax)
  cmpq $0xabcdef, marker+8(%rip)
  jne fail
  /* 8: mmu_update at every level of the live tables */
  MADDR new_l1, %rcx
  add $8, %rcx                          /* L1[1] -> marker: NEWVA + 4 KiB */
  MADDR marker, %rdx
  or $P_RW_U, %rdx
  MMU %rcx, %rdx
  EXPECT $0, '8'
  MADDR new_l2, %rcx
  add $8, %rcx                          /* L2[1] -> L1: NEWVA + 2 MiB */
  MADDR new_l1, %rdx
  or $P_RW_U, %rdx
  MMU %rcx, %rdx
  EXPECT $0, '9'
  MADDR new_l3, %rcx
  add $8, %rcx                          /* L3[1] -> L2: NEWVA + 1 GiB */
  MADDR new_l2, %rdx
  or $P_RW_U, %rdx
  MMU %rcx, %rdx
  EXPECT $0, 'a'
  MADDR new_l4, %rcx
  add $16, %rcx                         /* L4[2] -> L3: NEWVA + 512 GiB */
  MADDR new_l3, %rdx
  or $P_RW_U, %rdx
  MMU %rcx, %rdx
  EXPECT $0, 'b'
  movb $'c', fail_step(%rip)
  movabs $NEWVA + 0x1000, %rax
  cmpq $0x12345678, (%rax)
  jne fail
  movabs $NEWVA + 0x200000, %rax
  cmpq $0x12345678, (%rax)
  jne fail
  movabs $NEWVA + 0x40000000, %rax
  cmpq $0x12345678, (%rax)
  jne fail
  movabs $NEWVA + 0x8000000000, %rax
  cmpq $0x12345678, (%rax)
  jne fail
  /* d: an L1 entry that would map the live L2 writable: refused */
  MADDR new_l1, %rcx
  add $16, %rcx
  MADDR new_l2, %rdx
  or $P_RW_U, %rdx
  MMU %rcx, %rdx
  EXPECT $-22, 'd'
  /* u: the user base pointer: a validated L4 only, 0 for none */
  MADDR marker, %rax
  shr $12, %rax
  EXT $15, %rax
  EXPECT $-22, 'u'
  EXT $15, %rbx
  EXPECT $0, 'u'
  EXT $15, $0
  EXPECT $0, 'v'
  /* e: the TLB flushes are accepted; back to the builder's tables, unpin ours */
  EXT $6, $0
  EXPECT $0, 'e'
  EXT $7, $NEWVA
  EXPECT $0, 'e'
  mov %r14, %rax
  shr $12, %rax
  EXT $5, %rax
  EXPECT $0, 'f'
  EXT $4, %rbx
  EXPECT $0, 'g'
  /* h: untyped again, the page may be writable; NEWVA is gone with the tables */
  REMAP new_l1, $P_RW_U
  EXPECT $0, 'h'
  movq $0, new_l1(%rip)
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
ok: .ascii "mm_newas ok\n"
ok_end:
  .data
failmsg: .ascii "mm_newas FAIL "
fail_step: .ascii "?\n"
failmsg_end:
  .p2align 3
req: .quad 0, 0
op: .long 0, 0
  .quad 0, 0
done: .long 0
  .p2align 12
new_l4: .fill 4096, 1, 0
new_l3: .fill 4096, 1, 0
new_l2: .fill 4096, 1, 0
new_l1: .fill 4096, 1, 0
marker: .quad 0x12345678
  .fill 4088, 1, 0
