/* ring_hello: prints on console 0's ring (xen/include/public/io/console.h),
   not through console_io. The page is start_info's console.domU.mfn (mapped
   at VIRT_BASE + mfn << 12: a pvxen PV guest's mfn is its pfn), the port
   console.domU.evtchn. Writes the text at out_prod, publishes out_prod
   after a write barrier, EVTCHNOP_send, then waits (bounded) for the
   console daemon to consume it (out_cons == out_prod), says so through
   console_io and powers off; "ring hello: not consumed" and crash if not. */
.include "xen.inc"
.set EVTCHNOP_send, 4
.set SI_CONSOLE_MFN, 72                 /* struct start_info, 64-bit */
.set SI_CONSOLE_EVTCHN, 80
.set XENCONS_OUT, 1024                  /* struct xencons_interface */
.set XENCONS_OUT_MASK, 2047
.set XENCONS_OUT_CONS, 3080
.set XENCONS_OUT_PROD, 3084
.set SPINS, 20000000

  .text
  .globl _start
_start:
  mov %rsi, %r12                        /* start_info */
  mov SI_CONSOLE_MFN(%r12), %rbx
  shl $12, %rbx
  mov $0xffffffff80000000, %rax
  add %rax, %rbx                        /* the console page */
  mov XENCONS_OUT_PROD(%rbx), %ecx      /* ours: the guest produces */
  lea msg(%rip), %rsi
  mov $(msg_end - msg), %edx
1:
  mov %ecx, %eax
  and $XENCONS_OUT_MASK, %eax
  movb (%rsi), %r8b
  movb %r8b, XENCONS_OUT(%rbx,%rax)
  inc %rsi
  inc %ecx
  dec %edx
  jnz 1b
  sfence                                /* wmb(): the bytes before the index */
  mov %ecx, XENCONS_OUT_PROD(%rbx)
  mov %ecx, %r13d
  mov SI_CONSOLE_EVTCHN(%r12), %eax
  mov %eax, arg(%rip)
  mov $EVTCHNOP_send, %edi
  lea arg(%rip), %rsi
  HCALL event_channel_op
  mov $SPINS, %r14
2:
  mov XENCONS_OUT_CONS(%rbx), %eax      /* the backend's index */
  cmp %r13d, %eax
  je 3f
  pause
  dec %r14
  jnz 2b
  PRINT lost, $(lost_end - lost)
  SHUTDOWN $3
3:
  PRINT done, $(done_end - done)
  SHUTDOWN $0

  .data
arg: .quad 0
msg: .ascii "hello from a PV kernel on its console ring\r\n"
msg_end:
done: .ascii "ring hello consumed\n"
done_end:
lost: .ascii "ring hello: not consumed\n"
lost_end:
