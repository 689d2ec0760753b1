/* hello: console_io, then the shutdown reason given in start_info's cmdline
   digit (cmd_line[0] - '0', poweroff when empty). */
.include "xen.inc"
  .text
  .globl _start
_start:
  mov %rsi, %r12                       /* start_info */
  PRINT msg, $(msg_end - msg)
  movzbl 128(%r12), %eax               /* cmd_line[0] */
  sub $'0', %eax
  cmp $9, %eax
  jbe 1f
  xor %eax, %eax
1:
  SHUTDOWN %eax
msg: .ascii "Hello from a PV kernel\n"
msg_end:
