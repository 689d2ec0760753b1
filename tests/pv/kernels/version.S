/* version: prints "XEN x.y\n" from xen_version(XENVER_version), powers off. */
.include "xen.inc"
  .text
  .globl _start
_start:
  mov $0, %edi                         /* XENVER_version */
  xor %esi, %esi
  HCALL xen_version
  mov %eax, %ebx
  shr $16, %eax
  add $'0', %al
  mov %al, buf+4(%rip)
  mov %bl, %al
  add $'0', %al
  mov %al, buf+6(%rip)
  PRINT buf, $8
  SHUTDOWN $0
  .data
buf: .ascii "XEN ?.?\n"
