; debug.asm -- ox86 guest test: debug exceptions (single-step, DR0-DR7 breakpoints).
;
; Expected values come from the Intel SDM vol. 3 ch. 17 (debug exceptions, DR6/DR7,
; single-step, RF); all of these checks were validated under QEMU 7.2
; (qemu-system-i386 -accel tcg), which implements them.
; Not here, because QEMU cannot serve as the oracle: alignment checking (#AC, not
; implemented by QEMU TCG) and x87 errors through IRQ 13 with CR0.NE=0 (QEMU 7.2
; aborts with an assertion in tcg_handle_interrupt when FWAIT raises FERR#); those
; checks are in align.asm, which is run under ox86 only.
;
; What it checks (each check prints "ok NAME" or "FAIL NAME ..."; last line PASS/FAIL;
; exit through isa-debug-exit: 0x10 = pass (QEMU status 33), 0x11 = fail (35)):
;  - DR6 reserved bits: after MOV DR6 <- 0, DR6 reads 0xffff0ff0;
;  - single-step: POPF sets EFLAGS.TF; no trap after that POPF, then one #DB
;    (trap) after each of 5 straight-line instructions: count, each pushed EIP
;    (= the next instruction; the differences are the instruction lengths
;    5, 2, 7, 1, 10), DR6.BS (bit 14) set and B0-B3/BD/BT clear, pushed EFLAGS.TF
;    set, TF clear inside the handler, the memory write of the 5th instruction
;    visible; the handler clears TF in the frame at the end label;
;  - single-step of a POPF that clears TF still traps after that POPF (TF is
;    sampled at the start of the instruction): 4 traps;
;  - INT n with TF set: no #DB before the handler, the handler runs with TF clear
;    and sees TF set in its pushed EFLAGS; after its IRET the next instruction
;    executes and the first trap comes after it;
;  - instruction breakpoint: DR0 = label, DR7 L0, R/W0=00, LEN0=00: #DB (fault)
;    with pushed EIP = label, DR6.B0, the instruction's store not yet done; the
;    handler sets RF in the frame, the instruction then runs once (one #DB);
;  - data breakpoints: DR1 = dword, DR7 L1, R/W1=01 (write), LEN1=11: a write
;    traps after the instruction (EIP = next, value visible, DR6.B1), a read
;    does not; R/W1=11 (read/write): a dword read and a byte read of the last
;    byte trap, a read of the next dword does not.

%define PROGNAME "debug"
%include "lib/common.inc"

VEC_TINT equ 0x85        ; software interrupt used by the INT-with-TF check

TF  equ 0x100
RF  equ 0x10000
DR6_BITS equ 0xe00f      ; BT BS BD B3..B0

section .text
BITS 32
main:
    mov dword [exc_hooks + 1*4], db_hook
    mov dword [exc_hooks + VEC_TINT*4], tint_hook

    ; ---------------------------------------------------------- DR6 fixed bits
    xor eax, eax
    mov dr6, eax
    mov eax, dr6
    CHECK "dr6_reserved_bits", eax, 0xffff0ff0

    ; ---------------------------------------------------------- single-step
    call db_reset
    mov dword [db_stop], ss_end
    mov dword [db_snap_ptr], ss_var
    mov dword [ss_var], 0
    pushfd
    or dword [esp], TF
    popfd
ss_i1: mov eax, 0x12345678                  ; 5 bytes
ss_i2: add eax, ebx                         ; 2 bytes
ss_i3: lea ecx, [eax+ebx*4+0x100]           ; 7 bytes
ss_i4: nop                                  ; 1 byte
ss_i5: mov dword [ss_var], 0x77             ; 10 bytes
ss_end:
    pushfd
    pop eax
    and eax, TF
    CHECK "ss_tf_cleared_by_handler", eax, 0
    CHECK "ss_trap_count", [db_count], 5
    CHECK "ss_eip1", [db_eip+0], ss_i2
    CHECK "ss_eip2", [db_eip+4], ss_i3
    CHECK "ss_eip3", [db_eip+8], ss_i4
    CHECK "ss_eip4", [db_eip+12], ss_i5
    CHECK "ss_eip5", [db_eip+16], ss_end
    mov eax, [db_eip+0]
    sub eax, ss_i1
    CHECK "ss_len1", eax, 5
    mov eax, [db_eip+4]
    sub eax, [db_eip+0]
    CHECK "ss_len2", eax, 2
    mov eax, [db_eip+8]
    sub eax, [db_eip+4]
    CHECK "ss_len3", eax, 7
    mov eax, [db_eip+12]
    sub eax, [db_eip+8]
    CHECK "ss_len4", eax, 1
    mov eax, [db_eip+16]
    sub eax, [db_eip+12]
    CHECK "ss_len5", eax, 10
    CHECK "ss_dr6_1", [db_dr6+0], 0x4000
    CHECK "ss_dr6_2", [db_dr6+4], 0x4000
    CHECK "ss_dr6_3", [db_dr6+8], 0x4000
    CHECK "ss_dr6_4", [db_dr6+12], 0x4000
    CHECK "ss_dr6_5", [db_dr6+16], 0x4000
    CHECK "ss_pushed_tf", [db_efl+0], TF
    CHECK "ss_tf_clear_in_handler", [db_htf], 0
    CHECK "ss_store_before_trap_5", [db_snap+12], 0
    CHECK "ss_store_visible_at_trap_5", [db_snap+16], 0x77

    ; POPF clearing TF: the POPF itself still traps
    call db_reset
    pushfd
    or dword [esp], TF
    popfd
sp_i1: nop
sp_i2: pushfd
sp_i3: and dword [esp], ~TF
sp_i4: popfd
sp_end:
    CHECK "ss_popf_clear_count", [db_count], 4
    CHECK "ss_popf_clear_eip1", [db_eip+0], sp_i2
    CHECK "ss_popf_clear_eip4", [db_eip+12], sp_end
    CHECK "ss_popf_clear_dr6", [db_dr6+12], 0x4000

    ; INT n with TF set
    call db_reset
    mov dword [db_stop], ti_end
    mov dword [ti_count], -1
    mov dword [ti_htf], -1
    mov dword [ti_ptf], -1
    pushfd
    or dword [esp], TF
    popfd
ti_int: int VEC_TINT
ti_next: nop
ti_end:
    CHECK "int_tf_handler_ran", [ti_ran], 1
    CHECK "int_tf_no_db_before_handler", [ti_count], 0
    CHECK "int_tf_handler_tf_clear", [ti_htf], 0
    CHECK "int_tf_handler_pushed_tf", [ti_ptf], TF
    CHECK "int_tf_handler_pushed_eip", [ti_peip], ti_next
    CHECK "int_tf_db_count", [db_count], 1
    CHECK "int_tf_db_eip_after_next", [db_eip+0], ti_end
    CHECK "int_tf_db_dr6", [db_dr6+0], 0x4000

    ; ---------------------------------------------------------- instruction breakpoint
    call db_reset
    mov dword [db_setrf], 1
    mov dword [db_snap_ptr], ib_var
    mov dword [ib_var], 0
    mov eax, ib_label
    mov dr0, eax
    mov eax, 0x00000001                 ; L0, R/W0 = 00, LEN0 = 00
    mov dr7, eax
ib_label:
    mov dword [ib_var], 0x1234
ib_next:
    xor eax, eax
    mov dr7, eax
    CHECK "ibp_count", [db_count], 1
    CHECK "ibp_eip_is_label", [db_eip+0], ib_label
    CHECK "ibp_dr6_b0", [db_dr6+0], 1
    CHECK "ibp_before_execution", [db_snap+0], 0
    CHECK "ibp_executed_after_rf", [ib_var], 0x1234
    mov eax, [db_efl+0]
    and eax, RF
    CHECK "ibp_pushed_rf_clear", eax, 0

    ; ---------------------------------------------------------- data breakpoints
    call db_reset
    mov dword [db_snap_ptr], dv_var
    mov dword [dv_var], 0x11
    mov eax, dv_var
    mov dr1, eax
    mov eax, 0x00d00004                 ; L1, R/W1 = 01 (write), LEN1 = 11 (4 bytes)
    mov dr7, eax
dw_w: mov dword [dv_var], 0xabcd
dw_after:
    mov ecx, [dv_var]                   ; read: no trap
dw_r_after:
    xor eax, eax
    mov dr7, eax
    CHECK "dbw_count", [db_count], 1
    CHECK "dbw_eip_next", [db_eip+0], dw_after
    CHECK "dbw_value_visible", [db_snap+0], 0xabcd
    CHECK "dbw_dr6_b1", [db_dr6+0], 2
    CHECK "dbw_read_value", ecx, 0xabcd

    call db_reset
    mov dword [db_snap_ptr], dv_var
    mov eax, 0x00f00004                 ; L1, R/W1 = 11 (read/write), LEN1 = 11
    mov dr7, eax
drw_r: mov ecx, [dv_var]
drw_after:
    mov dl, [dv_var+3]
drw_after2:
    mov ebx, [dv_var+4]                 ; outside the 4 bytes: no trap
    xor eax, eax
    mov dr7, eax
    CHECK "dbrw_count", [db_count], 2
    CHECK "dbrw_read_eip_next", [db_eip+0], drw_after
    CHECK "dbrw_read_dr6_b1", [db_dr6+0], 2
    CHECK "dbrw_byte_read_eip_next", [db_eip+4], drw_after2
    CHECK "dbrw_byte_read_dr6_b1", [db_dr6+4], 2

    jmp finish

; ---------------------------------------------------------------- helpers
db_reset:
    push eax
    push edi
    push ecx
    xor eax, eax
    mov dr7, eax
    mov dr6, eax
    mov [db_count], eax
    mov [db_setrf], eax
    mov [db_stop], eax
    mov dword [db_htf], -1
    mov dword [db_snap_ptr], db_dummy
    mov edi, db_eip
    mov ecx, 4*DB_MAX
    mov eax, -1
    rep stosd
    pop ecx
    pop edi
    pop eax
    ret

; #DB hook (EBP = frame): records DR6 (BT BS BD B0-B3), EIP, EFLAGS (TF|RF) and a
; snapshot of [db_snap_ptr]; clears DR6; sets RF if asked; clears TF at db_stop.
db_hook:
    mov eax, dr7                        ; no breakpoints inside the handler (the
    mov [db_saved_dr7], eax             ; snapshot may read a watched variable)
    xor eax, eax
    mov dr7, eax
    pushfd
    pop eax
    and eax, TF
    mov [db_htf], eax
    mov ecx, [db_count]
    inc dword [db_count]
    cmp ecx, DB_MAX
    jae .over
    mov eax, dr6
    and eax, DR6_BITS
    mov [db_dr6 + ecx*4], eax
    mov eax, [ebp+F_EIP]
    mov [db_eip + ecx*4], eax
    mov eax, [ebp+F_EFLAGS]
    and eax, TF|RF
    mov [db_efl + ecx*4], eax
    mov eax, [db_snap_ptr]
    mov eax, [eax]
    mov [db_snap + ecx*4], eax
    jmp .rest
.over:                                  ; runaway: stop everything
    and dword [ebp+F_EFLAGS], ~TF
    mov dword [db_saved_dr7], 0
.rest:
    xor eax, eax
    mov dr6, eax
    mov eax, [db_saved_dr7]
    mov dr7, eax
    cmp dword [db_setrf], 0
    je .norf
    or dword [ebp+F_EFLAGS], RF
.norf:
    mov eax, [ebp+F_EIP]
    cmp eax, [db_stop]
    jne .out
    and dword [ebp+F_EFLAGS], ~TF
.out:
    ret

tint_hook:
    mov dword [ti_ran], 1
    mov eax, [db_count]
    mov [ti_count], eax
    pushfd
    pop eax
    and eax, TF
    mov [ti_htf], eax
    mov eax, [ebp+F_EFLAGS]
    and eax, TF
    mov [ti_ptf], eax
    mov eax, [ebp+F_EIP]
    mov [ti_peip], eax
    ret

DB_MAX equ 8

section .data
align 4
db_count:    dd 0
db_saved_dr7: dd 0
db_setrf:    dd 0
db_stop:     dd 0
db_htf:      dd -1
db_snap_ptr: dd db_dummy
db_dummy:    dd 0
db_eip:      times DB_MAX dd -1
db_dr6:      times DB_MAX dd -1
db_efl:      times DB_MAX dd -1
db_snap:     times DB_MAX dd -1
ss_var:      dd 0
ib_var:      dd 0
align 16
dv_var:      dd 0
dv_next:     dd 0
ti_ran:      dd 0
ti_count:    dd -1
ti_htf:      dd -1
ti_ptf:      dd -1
ti_peip:     dd -1
