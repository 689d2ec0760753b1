/* version: prints "XEN x.yy\n" from xen_version(XENVER_version), powers off. */
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
  mov %al, buf+4(%rip)                 /* major: one digit */
  movzwl %bx, %eax
  mov $10, %ecx
  xor %edx, %edx
  div %ecx                             /* minor: two digits */
  add $'0', %al
  mov %al, buf+6(%rip)
  add $'0', %dl
  mov %dl, buf+7(%rip)
  PRINT buf, $9
  SHUTDOWN $0
  .data
buf: .ascii "XEN ?.??\n"
