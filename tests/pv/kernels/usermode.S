/* usermode: a kernel that enters guest user mode and is entered back.
   The kernel sets a kernel stack (stack_switch), a syscall callback
   (callback_op; not when the command line starts with 'n'), traps, and
   HYPERVISOR_irets to user_main on the user page tables, which the test
   prepares (VCpu.user_cr3): they also map VA 0x400000, the kernel's do not.
   User code: reads 0x400000, syscall(7) -> 49, int $0x80 (DPL 3),
   int $0x81 (DPL 0: #GP), a #PF, int3, then syscall(0): the kernel reads
   0x400000 itself (a kernel-mode #PF) and powers off. Every entry is logged
   (record.inc); results in user_out. With a command line starting with 'g'
   user mode runs on the kernel's own GDT selectors, as Linux's
   (__USER_CS 0x33, __USER_DS 0x2b after set_gdt), not Xen's flat ones. */
.include "xen.inc"
.include "record.inc"
.set stack_switch, 3
.set set_gdt, 2
.set VB, 0xffffffff80000000
.set VGCF_in_syscall, 0x100
  .text
  .globl _start, user_main, site_sys, site_sys_ret, site_int80, site_int81, site_pf
  .globl site_bp, site_exit, site_kpf, user_out, kstack_top, ustack_top
_start:
  mov %rsi, %r12
  MAP_SHARED_INFO
  movabs $SPARE + 1, %rax
  movb $0, (%rax)                       /* events on */
  lea traps(%rip), %rdi
  HCALL set_trap_table
  mov $0xe02b, %edi
  lea kstack_top(%rip), %rsi
  HCALL stack_switch
  cmpb $'n', 128(%r12)                  /* start_info.cmd_line */
  je 1f
  xor %edi, %edi                        /* CALLBACKOP_register */
  lea reg_syscall(%rip), %rsi
  HCALL callback_op
1:
  mov $0xe02b, %r14                     /* user ss, cs: Xen's flat ones ... */
  mov $0xe033, %r15
  cmpb $'g', 128(%r12)
  jne 2f
  lea gdt_page(%rip), %rax              /* ... or the kernel's GDT's */
  movabs $VB, %rcx
  sub %rcx, %rax
  shr $12, %rax                         /* a pvxen mfn is its pfn */
  mov %rax, gdt_frames(%rip)
  lea gdt_frames(%rip), %rdi
  mov $16, %esi
  HCALL set_gdt
  mov %rax, user_out+48(%rip)
  mov $0x2b, %r14
  mov $0x33, %r15
2:
  /* HYPERVISOR_iret to user mode: flags, rip, cs, rflags, rsp, ss */
  push %r14
  lea ustack_top(%rip), %rax
  push %rax
  pushq $0x202
  push %r15
  lea user_main(%rip), %rax
  push %rax
  pushq $0
  jmp hypercall_page + 32 * iret

user_main:
  movabs 0x400000, %rax                 /* mapped by the user tables only */
  mov %rax, user_out(%rip)
  mov %cs, %rax
  mov %rax, user_out+32(%rip)
  mov %ss, %rax
  mov %rax, user_out+40(%rip)
  mov $7, %edi
  mov $0x1111, %ecx
  mov $0x2222, %r11d
site_sys:
  syscall
site_sys_ret:
  mov %rax, user_out+8(%rip)
  mov %rcx, user_out+16(%rip)
  mov %r11, user_out+24(%rip)
site_int80:
  int $0x80
  SKIP 2
site_int81:
  int $0x81
  SKIP 10
site_pf:
  movabs 0x10, %rax
site_bp:
  int3
  xor %edi, %edi
site_exit:
  syscall
  ud2

sys_entry:                              /* rcx, r11, rip, cs, rflags, rsp, ss */
  pop %rcx
  pop %r11
  push %rax
  mov %cs, %rax
  mov %rax, user_out+56(%rip)           /* the kernel's cs */
  pop %rax
  push %rdi
  push %rsi
  push %rdx
  push %r8
  lea 32(%rsp), %r8
  mov %rcx, %rsi                        /* logged as "error code": the user's rcx */
  mov $0x5c, %edi
  call record
  pop %r8
  pop %rdx
  pop %rsi
  pop %rdi
  test %rdi, %rdi
  jz sys_exit
  lea 42(%rdi), %rax
  pushq $VGCF_in_syscall
  jmp hypercall_page + 32 * iret
sys_exit:
  SKIP 10
site_kpf:
  movabs 0x400000, %rax                 /* not mapped in kernel mode */
  SHUTDOWN $0

HANDLER h_int80, 0x80, 0
HANDLER h_bp, 3, 0
HANDLER h_ud, 6, 0
HANDLER h_gp, 13, 1
HANDLER h_pf, 14, 1


  .data
  .p2align 3
traps:
  TRAP 3, 3, h_bp
  TRAP 6, 0, h_ud
  TRAP 13, 0, h_gp
  TRAP 14, 0, h_pf
  TRAP 0x80, 3, h_int80
  TRAP 0x81, 0, h_int80
  .quad 0, 0
reg_syscall:                            /* struct callback_register */
  .word 2, 0                            /* CALLBACKTYPE_syscall, no flags */
  .long 0
  .quad sys_entry
user_out: .fill 64, 1, 0
gdt_frames: .quad 0
  .p2align 12
gdt_page:                               /* Linux's layout: user data 5, user code 6 */
  .quad 0, 0, 0, 0, 0
  .quad 0x00CFF2000000FFFF              /* 0x2b: data, DPL 3 */
  .quad 0x00AFFA000000FFFF              /* 0x33: 64-bit code, DPL 3 */
  .fill 4096 - 56, 1, 0
  .p2align 4
  .fill 1024, 1, 0
kstack_top:
  .fill 1024, 1, 0
ustack_top:
  .quad 0
