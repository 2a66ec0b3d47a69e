; align.asm -- ox86 guest test: alignment checking (#AC) and x87 error reporting
; through IRQ 13 with CR0.NE=0.
;
; Run under ox86 only (tests/guests.rs), NOT validated under QEMU: QEMU TCG does not
; implement alignment checking (no #AC is ever raised), and QEMU 7.2 aborts with an
; assertion (tcg_handle_interrupt: qemu_mutex_iothread_locked) when FWAIT raises
; FERR# with CR0.NE=0. The oracle is the Intel SDM: vol. 3 6.15 "Interrupt 17 -
; Alignment Check Exception (#AC)" (CR0.AM=1, EFLAGS.AC=1, CPL 3, misaligned data
; reference -> fault, error code 0, saved EIP = faulting instruction) and vol. 1
; 8.7 / vol. 3 "MS-DOS compatibility sub-mode" (NE=0: a pending unmasked x87
; exception is reported at the next waiting x87 instruction through FERR#, which
; PC hardware routes to IRQ 13).
;
; What it checks (each check prints "ok NAME" or "FAIL NAME ..."; last line PASS/FAIL;
; exit through isa-debug-exit: 0x10 = pass (status 33), 0x11 = fail (35)):
;  - ring 0 with CR0.AM=1 and AC=1: a misaligned dword read does not fault;
;  - ring 3 with AM=1, AC=1: #AC (vector 17), error code 0, EIP = faulting
;    instruction, for a misaligned dword read, a misaligned word write, and a
;    PUSH with a misaligned ESP; no #AC for an aligned dword read, an aligned
;    word read, or a byte read at an odd address;
;  - ring 3 with AM=1, AC=0 (entered with AC=0, and after POPF clears AC):
;    misaligned dword read does not fault;
;  - ring 3 with AM=0, AC=1: misaligned dword read does not fault;
;  - x87 error through IRQ 13 with CR0.NE=0: PICs at 0x20/0x28, only IRQ2
;    (master) and IRQ13 (slave) unmasked; FLDCW unmasks #Z; 1/0 sets FSW.ES|ZE
;    with no exception yet; STI; FWAIT -> vector 0x2d exactly once, the handler
;    sees FSW.ES and FSW.ZE, sends EOI to both PICs and does FNCLEX; no #MF
;    (vector 16); a later FWAIT raises nothing.

%define PROGNAME "align"
%include "lib/common.inc"

VEC_IRQ13 equ 0x2d
AC  equ 0x40000
AM  equ 0x40000

section .text
BITS 32
main:
    mov dword [exc_hooks + VEC_IRQ13*4], irq13_hook

    ; ---------------------------------------------------------- #AC
    mov eax, cr0
    or eax, AM
    mov cr0, eax
    pushfd
    or dword [esp], AC
    popfd
    EXPECT 17, .r0
    mov eax, [al_var+1]
.r0:
    CHECK_FAULT "ac_none_at_ring0", -1, -1, -1
    pushfd
    and dword [esp], ~AC
    popfd

    mov eax, user_ac
    mov ebx, 0x2 | AC
    call enter_ring3
    mov eax, user_noac
    mov ebx, 0x2
    call enter_ring3
    mov eax, cr0
    and eax, ~AM
    mov cr0, eax
    mov eax, user_noam
    mov ebx, 0x2 | AC
    call enter_ring3

    ; ---------------------------------------------------------- x87 error -> IRQ 13
    ; PICs: master base 0x20, slave base 0x28, cascade on IRQ2
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    mov al, 0xfb                        ; master: only IRQ2
    out 0x21, al
    mov al, 0xdf                        ; slave: only IRQ13
    out 0xa1, al
    mov eax, cr0
    and eax, ~(0x20 | 0x08 | 0x04)      ; NE = 0, TS = 0, EM = 0
    or eax, 0x02                        ; MP = 1
    mov cr0, eax
    fninit
    fldcw [fpu_cw]                      ; #Z unmasked
    fld1
    fldz
    fdivp st1, st0                      ; 1/0: #Z pending
    fnstsw ax
    movzx eax, ax
    and eax, 0x84
    CHECK "x87_zero_divide_pending", eax, 0x84
    CHECK "x87_no_irq13_yet", [irq13_count], 0
    sti
    fwait
    nop
    nop
    nop
    nop
    cli
    CHECK "x87_irq13_count", [irq13_count], 1
    mov eax, [irq13_fsw]
    and eax, 0x84
    CHECK "x87_irq13_fsw_es_ze", eax, 0x84
    fnstsw ax
    movzx eax, ax
    and eax, 0x80
    CHECK "x87_fnclex_cleared_es", eax, 0
    fwait                               ; nothing pending now
    CHECK "x87_irq13_count_after", [irq13_count], 1
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    fninit
    jmp finish

irq13_hook:
    inc dword [irq13_count]
    fnstsw ax
    movzx eax, ax
    mov [irq13_fsw], eax
    fnclex
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    ret


%assign USERMODE 1
user_ac:
    pushfd
    pop eax
    and eax, AC
    CHECK "ac_flag_set_in_ring3", eax, AC
    EXPECT 17, .r1
.f1: mov eax, [al_var+1]
.r1:
    CHECK_FAULT "ac_misaligned_dword_read", 17, 0, .f1
    EXPECT 17, .r2
    mov eax, [al_var]
.r2:
    CHECK_FAULT "ac_none_aligned_dword_read", -1, -1, -1
    EXPECT 17, .r3
.f3: mov [al_var+5], ax
.r3:
    CHECK_FAULT "ac_misaligned_word_write", 17, 0, .f3
    EXPECT 17, .r4
    mov ax, [al_var+6]
.r4:
    CHECK_FAULT "ac_none_aligned_word_read", -1, -1, -1
    EXPECT 17, .r5
    mov al, [al_var+3]
.r5:
    CHECK_FAULT "ac_none_odd_byte_read", -1, -1, -1
    mov ebx, esp
    EXPECT 17, .r6
    sub esp, 2
.f6: push eax
.r6:
    mov esp, ebx
    CHECK_FAULT "ac_misaligned_push", 17, 0, .f6
    pushfd
    and dword [esp], ~AC
    popfd
    EXPECT 17, .r7
    mov eax, [al_var+1]
.r7:
    CHECK_FAULT "ac_none_after_popf_clears_ac", -1, -1, -1
    int VEC_RING0

user_noac:
    EXPECT 17, .r1
    mov eax, [al_var+1]
.r1:
    CHECK_FAULT "ac_none_ring3_ac0", -1, -1, -1
    int VEC_RING0

user_noam:
    EXPECT 17, .r1
    mov eax, [al_var+1]
.r1:
    CHECK_FAULT "ac_none_ring3_am0", -1, -1, -1
    int VEC_RING0
%assign USERMODE 0

section .data
align 4
fpu_cw:      dw 0x037b                  ; default 0x037f with ZM cleared
align 16
al_var:      dd 0x11223344, 0x55667788
irq13_count: dd 0
irq13_fsw:   dd 0
