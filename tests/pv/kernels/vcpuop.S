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
  .globl _start, results, polled_ns, vipage
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
  .irp off, 4090, 4
  REGISTER_VCPU_INFO vipage, \off      /* crosses the page; misaligned: -ENXIO */
  mov %rax, (%rbx)
  add $8, %rbx
  .endr
  movq $0x100000, vi_reg(%rip)          /* not our frame: -EINVAL */
  movl $64, vi_reg+8(%rip)
  mov $VCPUOP_register_vcpu_info, %edi
  xor %esi, %esi
  lea vi_reg(%rip), %rdx
  HCALL vcpu_op
  mov %rax, (%rbx)
  add $8, %rbx
  .irp n, 1, 2
  REGISTER_VCPU_INFO vipage, 64         /* 0, then -EBUSY */
  mov %rax, (%rbx)
  add $8, %rbx
  .endr
  call read_time                        /* from the registered copy now */
  test %rax, %rax
  jz fail
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

  READ_TIME_FN read_time

  .data
  EVENT_DATA
  .p2align 3
results: .fill 14, 8, 0x55
polled_ns: .quad 0
scratch: .fill 64, 1, 0
halfms: .quad 500000
runstate: .fill 48, 1, 0x55
poll: .quad 0, 0, 0                     /* struct sched_poll: ports, nr_ports, timeout */
ports: .long 5
  .p2align 12
vipage: .fill 4096, 1, 0
ok: .ascii "vcpuop ok\n"
ok_end:
failmsg: .ascii "vcpuop FAIL\n"
failmsg_end:
