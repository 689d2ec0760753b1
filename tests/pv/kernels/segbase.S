/* segbase: set_segment_base, set_gdt and update_descriptor as Xen checks
   them. Each result (rax) goes to results[], in order; then poweroff.
    0 set_segment_base(FS, &fs_data)          then 1: %fs:0 read
    2 set_segment_base(GS_KERNEL, &gs_data)   then 3: %gs:0 read
    4 set_segment_base(GS_USER, &gsu_data)
    5 set_segment_base(FS, non-canonical)     6 set_segment_base(9, 0)
    7 set_gdt(frames, 7169 entries)           8 set_gdt(frame 0x100000, 8)
    9 set_gdt(gdt_bad: a TSS descriptor, 8)  10 set_gdt(gdt_page, 8)
   11 update_descriptor(misaligned)          12 update_descriptor(call gate)
   13 update_descriptor(gdt_page[3], DPL0 code) */
.include "xen.inc"
.set set_gdt, 2
.set update_descriptor, 10
.set set_segment_base, 25
.set VB, 0xffffffff80000000
  .text
  .globl _start, results, gdt_page, gdt_bad, fs_data, gs_data, gsu_data
.macro SAVE
  mov %rax, (%rbx)
  add $8, %rbx
.endm
.macro SEGBASE which, base
  mov $\which, %edi
  mov \base, %rsi
  HCALL set_segment_base
  SAVE
.endm
.macro PFN_OF label, reg                /* a pvxen mfn is its pfn */
  lea \label(%rip), \reg
  sub %r13, \reg
  shr $12, \reg
.endm
.macro SET_GDT frame_reg, entries
  mov \frame_reg, frames(%rip)
  lea frames(%rip), %rdi
  mov \entries, %esi
  HCALL set_gdt
  SAVE
.endm
.macro UPDATE maddr_reg, desc
  mov \maddr_reg, %rdi
  movabs \desc, %rsi
  HCALL update_descriptor
  SAVE
.endm
_start:
  lea results(%rip), %rbx
  movabs $VB, %r13
  lea fs_data(%rip), %r8
  SEGBASE 0, %r8
  mov %fs:0, %rax
  SAVE
  lea gs_data(%rip), %r8
  SEGBASE 2, %r8
  mov %gs:0, %rax
  SAVE
  lea gsu_data(%rip), %r8
  SEGBASE 1, %r8
  movabs $0x0000800000000000, %r8
  SEGBASE 0, %r8
  SEGBASE 9, $0
  PFN_OF gdt_page, %r9
  SET_GDT %r9, $7169
  mov $0x100000, %r10
  SET_GDT %r10, $8
  PFN_OF gdt_bad, %r10
  SET_GDT %r10, $8
  SET_GDT %r9, $8
  shl $12, %r9
  lea 4(%r9), %r10
  UPDATE %r10, $0x00AF9A000000FFFF
  lea 24(%r9), %r10
  UPDATE %r10, $0x0000EC0000080000      /* a 64-bit call gate, DPL 3 */
  UPDATE %r10, $0x00AF9A000000FFFF      /* code, DPL 0: fixed to 3 */
  SHUTDOWN $0

  .data
  .p2align 3
results: .fill 8 * 16, 1, 0
frames: .quad 0
fs_data: .quad 0x0f5f5f5f5f5f5f5f
gs_data: .quad 0x06565656565656
gsu_data: .quad 0
  .p2align 12
gdt_page:
  .quad 0
  .quad 0x00CF92000000FFFF               /* flat data, DPL 0: Xen makes it DPL 3 */
  .quad 0x00AFFA000000FFFF               /* 64-bit code, DPL 3 */
  .fill 4096 - 24, 1, 0
gdt_bad:
  .quad 0
  .quad 0x0000890000000067               /* a 64-bit TSS: never in a PV GDT */
  .fill 4096 - 16, 1, 0
