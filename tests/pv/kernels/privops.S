/* privops: the toolstack's hypercalls from an unprivileged PV kernel, as
   Xen's do_domctl/do_sysctl/do_platform_op answer them: -EFAULT for an
   unreadable struct, -EACCES for a wrong interface_version, else XSM's
   -EPERM (a domU is not the control domain), a domctl on a domain that
   does not exist included. Prints "privops ok" or "privops FAIL <step>". */
.include "xen.inc"
.include "mm.inc"
.set sysctl, 35
.set domctl, 36
.set platform_op, 7

/* HCALL nr on op with {cmd, interface_version} and domctl's domain */
.macro OP nr, cmd, version, domain=$0
  movl \cmd, op(%rip)
  movl \version, op+4(%rip)
  movw \domain, op+8(%rip)
  lea op(%rip), %rdi
  HCALL \nr
.endm

  .text
  .globl _start
_start:
  /* 1: an unreadable struct */
  mov $0x1000, %edi
  HCALL domctl
  EXPECT $-14, '1'
  mov $0x1000, %edi
  HCALL sysctl
  EXPECT $-14, '1'
  /* 2: the header readable, the union on a page we unmap: still -EFAULT */
  lea guard(%rip), %rdi
  xor %esi, %esi
  xor %edx, %edx
  HCALL update_va_mapping
  EXPECT $0, '2'
  lea guard-8(%rip), %rdi
  movl $5, (%rdi)
  movl $0x18, 4(%rdi)
  HCALL domctl
  EXPECT $-14, '2'
  /* 3: wrong interface versions */
  OP domctl, $5, $0x17                  /* getdomaininfo, an older ABI */
  EXPECT $-13, '3'
  OP domctl, $90, $0x18                 /* get_domain_state is stable: wants 0 */
  EXPECT $-13, '3'
  OP sysctl, $6, $0x15
  EXPECT $-13, '3'
  OP platform_op, $1, $0x03000000
  EXPECT $-13, '3'
  /* 4: right versions: XSM says no */
  OP domctl, $5, $0x18, $0              /* getdomaininfo of dom0 */
  EXPECT $-1, '4'
  OP domctl, $3, $0x18, $999            /* pause a domain that does not exist */
  EXPECT $-1, '4'
  OP domctl, $90, $0, $0x7ff4
  EXPECT $-1, '4'
  OP sysctl, $6, $0x16                  /* physinfo */
  EXPECT $-1, '4'
  OP platform_op, $1, $0x03000001       /* settime */
  EXPECT $-1, '4'
  VERDICT privops
  .p2align 3
op: .fill 144, 1, 0
  .p2align 12
  .fill 4096, 1, 0
guard: .fill 4096, 1, 0
