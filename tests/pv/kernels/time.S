/* time: system time from vcpu_time_info and rdtsc (the version protocol of
   xen/include/public/xen.h), read in a loop for 30 ms of its own time; every
   reading must be >= the one before. samples = {first, last}. "time ok" and
   poweroff, or "time FAIL" and crash. */
.include "events.inc"
  .text
  .globl _start, samples
_start:
  mov %rsi, %r12                        /* start_info */
  MAP_SHARED_INFO
  test %rax, %rax
  jnz fail
  call read_time
  mov %rax, samples(%rip)
  mov %rax, %rbx                        /* the previous reading */
1:
  call read_time
  cmp %rbx, %rax
  jb fail                               /* went backwards */
  mov %rax, %rbx
  sub samples(%rip), %rax
  cmp $30000000, %rax
  jb 1b
  mov %rbx, samples+8(%rip)
  PRINT ok, $(ok_end - ok)
  SHUTDOWN $0
fail:
  mov %rax, samples+8(%rip)
  PRINT failmsg, $(failmsg_end - failmsg)
  SHUTDOWN $3

  READ_TIME_FN read_time

  .data
  EVENT_DATA
samples: .quad 0, 0
ok: .ascii "time ok\n"
ok_end:
failmsg: .ascii "time FAIL\n"
failmsg_end:
