/* mm_memory: memory_op from a PV kernel, forwarded to hypervisord: the
   reservation, a page given back (then not ours to map) and populated again
   (and handed out again by increase_reservation),
   a page table that is kept, and the refusals. Prints "mm_memory ok <pages>"
   and powers off; else "mm_memory FAIL <step>" and crashes. */
.include "xen.inc"
.include "mm.inc"
.set VB, 0xffffffff80000000
.set SPARE, 0xffffffff800f0000          /* a mapped page nothing uses (pfn 240) */
.set DOMID_SELF, 0x7ff0

/* memory_op(cmd, &resv) with resv = {&extents, 1, order 0, 0, DOMID_SELF} */
.macro RESV cmd, pfn
  mov \pfn, %rax
  mov %rax, extents(%rip)
  mov \cmd, %edi
  lea resv(%rip), %rsi
  HCALL memory_op
.endm

.macro UVM val
  movabs $SPARE, %rdi
  mov \val, %rsi
  xor %edx, %edx
  HCALL update_va_mapping
.endm

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  movabs $VB, %r13
  lea extents(%rip), %rax
  mov %rax, resv(%rip)
  /* 1: the reservation is start_info's nr_pages; the maximum no less */
  mov $3, %edi                          /* XENMEM_current_reservation */
  lea self(%rip), %rsi
  HCALL memory_op
  mov %rax, %r15
  EXPECT 32(%r12), '1'
  mov $4, %edi                          /* XENMEM_maximum_reservation */
  lea self(%rip), %rsi
  HCALL memory_op
  movb $'2', fail_step(%rip)
  cmp %r15, %rax
  jb fail
  /* 3: no E820 was set for us (-ENOSYS); a bad pointer is -EFAULT; the
     machine's map is dom0's */
  mov $9, %edi
  lea mmap(%rip), %rsi
  HCALL memory_op
  EXPECT $-38, '3'
  mov $9, %edi
  mov $0x1000, %esi
  HCALL memory_op
  EXPECT $-14, '3'
  mov $10, %edi
  lea mmap(%rip), %rsi
  HCALL memory_op
  EXPECT $-1, '3'
  /* 4: a page table is not given back (0 extents done) */
  mov 88(%r12), %rbx
  sub %r13, %rbx
  shr $12, %rbx
  RESV $1, %rbx
  EXPECT $0, '4'
  /* 5: an ordinary page is; then it is not ours to map */
  lea victim(%rip), %rbx
  sub %r13, %rbx
  shr $12, %rbx
  RESV $1, %rbx                         /* XENMEM_decrease_reservation */
  EXPECT $1, '5'
  mov %rbx, %rcx
  shl $12, %rcx
  or $7, %rcx
  UVM %rcx
  EXPECT $-22, '6'
  mov $3, %edi
  lea self(%rip), %rsi
  HCALL memory_op
  lea -1(%r15), %rcx
  EXPECT %rcx, '7'
  /* 8: populated again: its "MFN" comes back in the list, and it maps */
  movq $0, extents(%rip)
  RESV $6, %rbx                         /* XENMEM_populate_physmap */
  EXPECT $1, '8'
  mov extents(%rip), %rax
  EXPECT %rbx, '8'
  mov %rbx, %rcx
  shl $12, %rcx
  or $7, %rcx
  UVM %rcx
  EXPECT $0, '9'
  /* a: an unreadable extent list: nothing done */
  movq $0x1000, resv(%rip)
  mov $1, %edi
  lea resv(%rip), %rsi
  HCALL memory_op
  EXPECT $0, 'a'
  /* b: XENMEM_increase_reservation: with nothing given back there is nothing
     to hand out (0 done); after the victim goes back it is handed out again,
     its MFN written to the list, and it maps; with a NULL list too */
  lea extents(%rip), %rax
  mov %rax, resv(%rip)
  movq $0, extents(%rip)
  mov $0, %edi
  lea resv(%rip), %rsi
  HCALL memory_op
  EXPECT $0, 'b'
  UVM $0                                /* SPARE no longer maps the victim */
  EXPECT $0, 'b'
  RESV $1, %rbx
  EXPECT $1, 'b'
  movq $0, extents(%rip)
  mov $0, %edi
  lea resv(%rip), %rsi
  HCALL memory_op
  EXPECT $1, 'B'
  mov extents(%rip), %rax
  EXPECT %rbx, 'B'
  mov %rbx, %rcx
  shl $12, %rcx
  or $7, %rcx
  UVM %rcx
  EXPECT $0, 'B'
  UVM $0
  RESV $1, %rbx
  EXPECT $1, 'e'
  movq $0, resv(%rip)                   /* a NULL extent list */
  mov $0, %edi
  lea resv(%rip), %rsi
  HCALL memory_op
  EXPECT $1, 'e'
  mov %rbx, %rcx
  shl $12, %rcx
  or $7, %rcx
  UVM %rcx
  EXPECT $0, 'e'
  /* c: an unreadable reservation struct: 0 extents done; add_to_physmap: -EACCES */
  mov $6, %edi
  mov $0x1000, %esi
  HCALL memory_op
  EXPECT $0, 'c'
  mov $7, %edi
  lea resv(%rip), %rsi
  HCALL memory_op
  EXPECT $-13, 'c'
  /* d: a "continuation" of current_reservation is -EINVAL */
  mov $(3 | 1 << 6), %edi
  lea self(%rip), %rsi
  HCALL memory_op
  EXPECT $-22, 'd'
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
ok: .ascii "mm_memory ok\n"
ok_end:
  .data
failmsg: .ascii "mm_memory FAIL "
fail_step: .ascii "?\n"
failmsg_end:
  .p2align 3
self: .word DOMID_SELF
  .p2align 3
resv: .quad 0, 1
  .long 0, 0
  .word DOMID_SELF, 0, 0, 0
extents: .quad 0
mmap: .long 0, 0
  .quad 0
  .p2align 12
victim: .fill 4096, 1, 0
  .p2align 12
