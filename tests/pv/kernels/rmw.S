/* rmw: a read-modify-write of memory, counted twice: `lock incq count` and
   `inc %r15` (a register, which no replay can touch), forever. The test
   stops it and compares the two (tests/pv/test_event_race.py): a slice that
   ends between the store of the locked increment and the end of the
   instruction, and then runs it again, counts one more in memory. */
.include "xen.inc"
  .text
  .globl _start, count
_start:
  xor %r15, %r15
1:
  lock incq count(%rip)
  inc %r15
  jmp 1b
  .data
  .p2align 3
count: .quad 0
