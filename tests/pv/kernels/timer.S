/* timer: VIRQ_TIMER bound (EVTCHNOP_bind_virq), the event callback
   registered; set_timer_op 5 ms ahead of vcpu_time_info's system time and
   SCHEDOP_block until it fires; then a 5 ms periodic timer
   (VCPUOP_set_periodic_timer) for three more ticks, stopped. The handler
   prints "tick" per VIRQ_TIMER event; then "timer ok" and poweroff, or
   "timer FAIL" and crash. */
.include "events.inc"
  .text
  .globl _start, ticks, on_event
_start:
  mov %rsi, %r12                        /* start_info */
  MAP_SHARED_INFO
  test %rax, %rax
  jnz fail
  REGISTER_EVENT_CALLBACK on_event
  test %rax, %rax
  jnz fail
  movl $0, arg(%rip)                    /* virq = VIRQ_TIMER */
  movl $0, arg+4(%rip)                  /* vcpu 0 */
  mov $EVTCHNOP_bind_virq, %edi
  lea arg(%rip), %rsi
  HCALL event_channel_op
  test %rax, %rax
  jnz fail
  mov arg+8(%rip), %eax
  mov %rax, port(%rip)
  call read_time
  add $5000000, %rax
  mov %rax, %rdi
  HCALL set_timer_op
  test %rax, %rax
  jnz fail
1:
  BLOCK
  cmpq $1, ticks(%rip)
  jb 1b
  mov $VCPUOP_set_periodic_timer, %edi
  xor %esi, %esi
  lea period(%rip), %rdx
  HCALL vcpu_op
  test %rax, %rax
  jnz fail
2:
  BLOCK
  cmpq $4, ticks(%rip)
  jb 2b
  mov $VCPUOP_stop_periodic_timer, %edi
  xor %esi, %esi
  xor %edx, %edx
  HCALL vcpu_op
  test %rax, %rax
  jnz fail
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

port_event:                             /* %edi = the port that fired */
  cmp port(%rip), %rdi
  jne 1f
  incq ticks(%rip)
  PRINT tick, $(tick_end - tick)
1:
  ret

  EVENT_HANDLER on_event, port_event
  READ_TIME_FN read_time

  .data
  EVENT_DATA
arg: .quad 0, 0
port: .quad 0
ticks: .quad 0
period: .quad 5000000
tick: .ascii "tick\n"
tick_end:
ok: .ascii "timer ok\n"
ok_end:
failmsg: .ascii "timer FAIL\n"
failmsg_end:
