/* grant: a PV kernel sets up its grant table (GNTTABOP_set_version,
   query_size, setup_table), maps the grant frame it was given with
   update_va_mapping, grants a page of its own to dom0 read-only (a v1 entry:
   domid and frame first, the flags last), prints "grant ok <ref>" and
   blocks until it is destroyed. On a wrong result: "grant FAIL <step>". */
.include "xen.inc"
.include "mm.inc"
.set VB, 0xffffffff80000000
.set GNTVA, 0xffffffff800f0000          /* a mapped page nothing uses (pfn 240) */
.set DOMID_SELF, 0x7ff0
.set REF, 8                             /* the first ref after the reserved ones */

.macro GNTTAB cmd, uop
  mov \cmd, %edi
  lea \uop(%rip), %rsi
  mov $1, %edx
  HCALL grant_table_op
.endm

  .text
  .globl _start
_start:
  movabs $VB, %r13
  /* 1: grant table v1 */
  movl $1, version(%rip)
  GNTTAB $8, version                    /* GNTTABOP_set_version */
  EXPECT $0, '1'
  movl version(%rip), %eax
  EXPECT $1, '1'
  /* 2: its size */
  movw $DOMID_SELF, qsize(%rip)
  GNTTAB $6, qsize                      /* GNTTABOP_query_size */
  EXPECT $0, '2'
  movswq qsize+12(%rip), %rax           /* status */
  EXPECT $0, '2'
  /* 3: one frame, and its number */
  movw $DOMID_SELF, setup(%rip)
  movl $1, setup+4(%rip)
  lea frames(%rip), %rax
  mov %rax, setup+16(%rip)
  GNTTAB $2, setup                      /* GNTTABOP_setup_table */
  EXPECT $0, '3'
  movswq setup+8(%rip), %rax
  EXPECT $0, '4'
  /* 5: map the grant frame (Xen shares it writable) */
  movabs $GNTVA, %rdi
  mov frames(%rip), %rsi
  shl $12, %rsi
  or $7, %rsi
  xor %edx, %edx
  HCALL update_va_mapping
  EXPECT $0, '5'
  /* 6: grant `shared` to dom0, read-only */
  movabs $GNTVA + 8 * REF, %rbx
  lea shared(%rip), %rax
  sub %r13, %rax
  shr $12, %rax
  movw $0, 2(%rbx)                      /* domid 0 */
  movl %eax, 4(%rbx)                    /* frame */
  sfence                                /* wmb(): the entry before its flags */
  movw $5, (%rbx)                       /* GTF_permit_access | GTF_readonly */
  PRINT ok, $(ok_end - ok)
1:
  mov $1, %edi                          /* SCHEDOP_block until destroyed */
  xor %esi, %esi
  HCALL sched_op
  jmp 1b
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
ok: .ascii "grant ok 8\n"
ok_end:
  .data
failmsg: .ascii "grant FAIL "
fail_step: .ascii "?\n"
failmsg_end:
  .p2align 3
version: .long 0
  .p2align 3
qsize: .fill 16, 1, 0
setup: .fill 24, 1, 0
frames: .quad 0, 0, 0, 0
  .p2align 12
shared: .ascii "a page granted by a PV kernel on its vCPU"
  .fill 4096 - 41, 1, 0
