/* segload: selector loads through the vCPU's GDT (hypervisord/vcpu/gdt.py).
   Xen's flat data selector loads into %ds/%es; after set_gdt a guest
   selector loads (its DPL 0 made 3); after update_descriptor makes it not
   present, the load is #NP(selector); an entry past the GDT's is #GP; the
   GDT's own mapping is not the guest's (#PF). Results in "sels"; every
   trap logged (record.inc). */
.include "xen.inc"
.include "record.inc"
.set set_gdt, 2
.set update_descriptor, 10
.set VB, 0xffffffff80000000
.set GDT_VIRT, 0xffff820000000000
  .text
  .globl _start, sels, site_np, site_gp, site_pf
_start:
  mov %rsi, %r12
  MAP_SHARED_INFO
  lea traps(%rip), %rdi
  HCALL set_trap_table
  mov $0xe02b, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %ds, %rbx
  mov %rbx, sels(%rip)
  mov %es, %rbx
  mov %rbx, sels+8(%rip)
  lea gdt_page(%rip), %r9                /* its mfn: a pvxen mfn is its pfn */
  movabs $VB, %rax
  sub %rax, %r9
  shr $12, %r9
  mov %r9, frames(%rip)
  lea frames(%rip), %rdi
  mov $8, %esi
  HCALL set_gdt
  mov %rax, sels+16(%rip)
  mov $0x0b, %eax                       /* index 1, RPL 3 */
  mov %eax, %ds
  mov %ds, %rbx
  mov %rbx, sels+24(%rip)
  mov $0xe02b, %eax
  mov %eax, %ds
  shl $12, %r9
  lea 8(%r9), %rdi                      /* gdt_page[1] */
  movabs $0x00CF72000000FFFF, %rsi      /* data, DPL 3, not present */
  HCALL update_descriptor
  mov %rax, sels+32(%rip)
  mov $0x0b, %eax
  SKIP 2
site_np:
  mov %eax, %ds
  mov $0x323, %eax                      /* index 100: past the 8 entries */
  SKIP 2
site_gp:
  mov %eax, %ds
  SKIP 10
site_pf:
  movabs GDT_VIRT + 0xe028, %rax
  SHUTDOWN $0

HANDLER h_np, 11, 1
HANDLER h_gp, 13, 1
HANDLER h_pf, 14, 1

  .data
  .p2align 3
traps:
  TRAP 11, 0, h_np
  TRAP 13, 0, h_gp
  TRAP 14, 0, h_pf
  .quad 0, 0
frames: .quad 0
sels: .fill 8 * 5, 1, 0
  .p2align 12
gdt_page:
  .quad 0
  .quad 0x00CF92000000FFFF               /* flat data, DPL 0: Xen makes it DPL 3 */
  .fill 4096 - 16, 1, 0
