/* evtchn: event-channel ops forwarded to hypervisord. alloc_unbound (for
   dom0), send on it (unbound: dropped, 0), close it (0), close again and
   send again (-EINVAL). "evtchn ok <port>" and poweroff, else FAIL + crash. */
.include "xen.inc"
.set EVTCHNOP_close, 3
.set EVTCHNOP_send, 4
.set EVTCHNOP_alloc_unbound, 6

.macro EVOP cmd
  mov $\cmd, %edi
  lea arg(%rip), %rsi
  HCALL event_channel_op
.endm

.macro EXPECT rc, step
  cmp \rc, %rax
  movb $'0' + \step, fail_step(%rip)
  jne fail
.endm

  .text
  .globl _start
_start:
  movw $0x7ff0, arg(%rip)               /* dom = DOMID_SELF */
  movw $0, arg+2(%rip)                  /* remote_dom = 0 */
  movl $0, arg+4(%rip)
  EVOP EVTCHNOP_alloc_unbound
  EXPECT $0, 1
  mov arg+4(%rip), %ebx                 /* the new port */
  test %ebx, %ebx
  movb $'2', fail_step(%rip)
  jz fail
  mov %ebx, arg(%rip)
  EVOP EVTCHNOP_send
  EXPECT $0, 3
  mov %ebx, arg(%rip)
  EVOP EVTCHNOP_close
  EXPECT $0, 4
  mov %ebx, arg(%rip)
  EVOP EVTCHNOP_close
  EXPECT $-22, 5
  mov %ebx, arg(%rip)
  EVOP EVTCHNOP_send
  EXPECT $-22, 6
  add $'0', %bl                         /* ports here are small: one digit */
  mov %bl, okport(%rip)
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
  .data
arg: .quad 0
ok: .ascii "evtchn ok "
okport: .ascii "?\n"
ok_end:
failmsg: .ascii "evtchn FAIL "
fail_step: .ascii "?\n"
failmsg_end:
