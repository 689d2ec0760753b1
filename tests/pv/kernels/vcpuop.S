/* vcpuop: vcpu_op and SCHEDOP_poll results into results[] (see
   tests/pv/test_events.py for the expected values), then "vcpuop ok" and
   poweroff. With cmdline "d": VCPUOP_down of vCPU 0 first (the last vCPU:
   Xen powers the domain off). */
.include "events.inc"
.set VCPUOP_initialise, 0
.set VCPUOP_up, 1
.set VCPUOP_down, 2
.set VCPUOP_is_up, 3
.set VCPUOP_get_runstate_info, 4
.set VCPUOP_register_vcpu_info, 10
.set SCHEDOP_poll, 3

.macro VOP cmd, vcpu, arg
  mov $\cmd, %edi
  mov $\vcpu, %esi
  lea \arg(%rip), %rdx
  HCALL vcpu_op
  mov %rax, (%rbx)
  add $8, %rbx
.endm

.macro POLL
  mov $SCHEDOP_poll, %edi
  lea poll(%rip), %rsi
  HCALL sched_op
  mov %rax, (%rbx)
  add $8, %rbx
.endm

  .text
  .globl _start, results, polled_ns
_start:
  mov %rsi, %r12                        /* start_info */
  MAP_SHARED_INFO
  lea results(%rip), %rbx
  cmpb $'d', 128(%r12)
  jne 1f
  VOP VCPUOP_down, 0, scratch
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3
1:
  VOP VCPUOP_is_up, 0, scratch
  VOP VCPUOP_is_up, 1, scratch
  VOP VCPUOP_initialise, 0, scratch
  VOP VCPUOP_up, 0, scratch
  VOP VCPUOP_set_periodic_timer, 0, halfms
  VOP VCPUOP_get_runstate_info, 0, runstate
  movslq runstate(%rip), %rax
  mov %rax, (%rbx)
  add $8, %rbx
  lea ports(%rip), %rax
  mov %rax, poll(%rip)
  movl $1, poll+8(%rip)
  call read_time
  mov %rax, %r13
  add $20000000, %rax
  mov %rax, poll+16(%rip)               /* timeout: 20 ms from now */
  POLL
  call read_time
  sub %r13, %rax
  mov %rax, polled_ns(%rip)
  movl $5000, ports(%rip)
  movq $0, poll+16(%rip)
  POLL
  VOP VCPUOP_register_vcpu_info, 0, scratch
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0

  READ_TIME_FN read_time

  .data
  EVENT_DATA
  .p2align 3
results: .fill 10, 8, 0x55
polled_ns: .quad 0
scratch: .fill 64, 1, 0
halfms: .quad 500000
runstate: .fill 48, 1, 0x55
poll: .quad 0, 0, 0                     /* struct sched_poll: ports, nr_ports, timeout */
ports: .long 5
ok: .ascii "vcpuop ok\n"
ok_end:
failmsg: .ascii "vcpuop FAIL\n"
failmsg_end:
