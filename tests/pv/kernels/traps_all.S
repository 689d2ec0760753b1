/* traps_all: every kind of trap a kernel-mode PV guest takes, each logged
   by its handler (record.inc) and resumed: #DE, #BP (int3), int $0x80 (DPL 3),
   int $0x82 (DPL 1: allowed from the kernel), int $0x81 (DPL 0: #GP), hlt
   (#GP), ud2 (#UD), a forced-emulation cpuid (no trap for the guest), and
   #PF through a TI_SET_IF entry (events masked in the handler).
   The test reads the log; cpuid's answers are kept in "cpuid_out". */
.include "xen.inc"
.include "record.inc"
  .text
  .globl _start, site_de, site_bp, site_int80, site_int81, site_int82, site_hlt
  .globl site_ud, site_pf, cpuid_out, after_all
_start:
  mov %rsi, %r12
  MAP_SHARED_INFO
  test %rax, %rax
  jnz fail
  movabs $SPARE + 1, %rax
  movb $0, (%rax)                       /* events on: evtchn_upcall_mask = 0 */
  lea traps(%rip), %rdi
  HCALL set_trap_table
  test %rax, %rax
  jnz fail
  mov $0x5a5a, %r15                     /* must survive every trap */
  xor %ecx, %ecx
  SKIP 2
site_de:
  div %ecx
  SKIP 0
site_bp:
  int3
site_int80:
  int $0x80
site_int82:
  int $0x82
  SKIP 2
site_int81:
  int $0x81
  SKIP 1
site_hlt:
  hlt
  SKIP 2
site_ud:
  ud2
  mov $0x40000000, %eax
  xor %ecx, %ecx
  ud2
  .ascii "xen"
  cpuid
  mov %eax, cpuid_out(%rip)
  mov %ebx, cpuid_out+4(%rip)
  mov %ecx, cpuid_out+8(%rip)
  mov %edx, cpuid_out+12(%rip)
  mov $1, %eax
  ud2
  .ascii "xen"
  cpuid
  mov %ecx, cpuid_out+16(%rip)
  mov %edx, cpuid_out+20(%rip)
  SKIP 10
site_pf:
  movabs 0x10, %rax
after_all:
  cmp $0x5a5a, %r15
  jne fail
  SHUTDOWN $0
fail:
  SHUTDOWN $3

HANDLER h_de, 0, 0
HANDLER h_bp, 3, 0
HANDLER h_int80, 0x80, 0
HANDLER h_int82, 0x82, 0
HANDLER h_gp, 13, 1
HANDLER h_ud, 6, 0
HANDLER h_pf, 14, 1


  .data
  .p2align 3
traps:                                  /* struct trap_info: vector, flags, cs, address */
  TRAP 0, 0, h_de
  TRAP 3, 0, h_bp
  TRAP 6, 0, h_ud
  TRAP 13, 0, h_gp
  TRAP 14, 4, h_pf                      /* TI_SET_IF: mask events on entry */
  TRAP 0x80, 3, h_int80
  TRAP 0x81, 0, h_int80
  TRAP 0x82, 1, h_int82
  .quad 0, 0
cpuid_out: .fill 24, 1, 0
