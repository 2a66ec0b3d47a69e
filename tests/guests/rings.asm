; rings.asm -- ox86 guest test: privilege levels, gates, exceptions, tasks.
;
; What it checks (each check prints "ok NAME" or "FAIL NAME ..."; last line PASS/FAIL;
; exit through isa-debug-exit: 0x10 = pass (QEMU status 33), 0x11 = fail (35)):
;  - ring-0 exceptions with vector, error code and saved EIP: #DE (DIV), #BP (INT3,
;    INT 3: EIP after), #OF (INTO with OF=1; no trap with OF=0), #BR (BOUND out of
;    range; none in range), #UD (UD2), #NP(sel) loading a not-present data segment,
;    #SS(sel) loading it into SS, #GP(sel) for a selector beyond the GDT limit and
;    for a TSS selector loaded into DS, #NP(vec*8+2) for INT n through a
;    not-present IDT gate;
;  - #DF: #GP whose IDT gate is not present -> #NP during delivery of a
;    contributory fault -> #DF with error code 0, first through an interrupt
;    gate, then through a task gate (the #DF task sees error code 0 on its stack
;    and the faulting task as back link);
;  - TSS with a ring-0 stack; IRET to ring 3; CPL from CS RPL; INT 0x80 through a
;    DPL3 interrupt gate (frame CS/SS/ESP, ring-0 stack from TSS.ESP0, return
;    value); a far call through a DPL3 call gate with 2 dword parameters copied to
;    the ring-0 stack, RETF 8 (result, caller CS/SS/ESP, ring-3 ESP restored);
;  - ring 3 with IOPL 0: #GP(0) from CLI, HLT, MOV from CR0; POPF silently keeps
;    IF and IOPL; #GP(vec*8+2) for INT n / INT3 through DPL0 gates; #GP(sel) for
;    loading a DPL0 data selector; a DPL3 selector with RPL 0 loads fine;
;  - I/O permission bitmap: port 0x3ff (UART scratch) allowed: OUT/IN round trip
;    from ring 3; IN from 0x3fe faults #GP(0); 16-bit IN at 0x3ff faults because
;    port 0x400 is not allowed; with IOPL 3 CLI and IN 0x3fe are allowed;
;  - hardware task switches: far CALL to a TSS selector (new task sees NT=1, back
;    link, TR, both busy bits; IRET with NT returns; registers of the caller
;    restored, busy bit of the callee cleared, CR0.TS set), far JMP to a TSS
;    selector and far JMP back (NT=0, busy bit of the old task cleared).

%define PROGNAME "rings"
%include "lib/common.inc"

TSS3_SEL equ SPARE_SEL

section .text
BITS 32
main:
    ; call gate: DPL3, 32-bit, 2 dword parameters, target KCODE:cg_routine
    mov eax, cg_routine
    mov [gdt + CGATE_SEL], ax
    mov word [gdt + CGATE_SEL + 2], KCODE
    mov byte [gdt + CGATE_SEL + 4], 2
    mov byte [gdt + CGATE_SEL + 5], 0xEC
    shr eax, 16
    mov [gdt + CGATE_SEL + 6], ax
    ; INT 0x80: DPL3 interrupt gate, hook = syscall
    mov eax, 0x80
    call stub_addr
    mov cl, 0xEE
    call set_gate
    mov dword [exc_hooks + 0x80*4], syscall_hook
    ; port 0x3ff allowed in the I/O bitmap
    mov edx, 0x3ff
    call io_allow

    mov eax, cs
    and eax, 3
    CHECK "cpl0", eax, 0

    ; ---------------------------------------------------------- ring-0 exceptions
    EXPECT 0, .r_de
    mov eax, 5
    xor edx, edx
    xor ecx, ecx
.f_de: div ecx
.r_de:
    CHECK_FAULT "de_div_zero", 0, 0, .f_de
    EXPECT 3, .r_bp
    int3
.a_bp:
.r_bp:
    nop
    CHECK_FAULT "bp_int3", 3, 0, .a_bp
    EXPECT 3, .r_bp2
    int 3
.a_bp2:
    nop
.r_bp2:
    CHECK_FAULT "bp_int_3", 3, 0, .a_bp2
    EXPECT 4, .r_of
    mov al, 0x7f
    add al, 1                           ; OF = 1
    into
.a_of:
    nop
.r_of:
    CHECK_FAULT "of_into", 4, 0, .a_of
    EXPECT 4, .r_of0
    mov al, 1
    add al, 1                           ; OF = 0
    into
.r_of0:
    CHECK_FAULT "of_into_no_overflow", -1, -1, -1
    EXPECT 5, .r_br
    mov eax, 25
.f_br: bound eax, [bounds]
.r_br:
    CHECK_FAULT "br_bound_out", 5, 0, .f_br
    EXPECT 5, .r_br2
    mov eax, 20
    bound eax, [bounds]
.r_br2:
    CHECK_FAULT "br_bound_in", -1, -1, -1
    EXPECT 6, .r_ud
.f_ud: ud2
.r_ud:
    CHECK_FAULT "ud_ud2", 6, 0, .f_ud
    EXPECT 11, .r_np
    mov ax, NPSEG_SEL
.f_np: mov ds, ax
.r_np:
    CHECK_FAULT "np_segment", 11, NPSEG_SEL, .f_np
    EXPECT 12, .r_ss
    mov ax, NPSEG_SEL
.f_ss: mov ss, ax
.r_ss:
    CHECK_FAULT "ss_segment_not_present", 12, NPSEG_SEL, .f_ss
    EXPECT 13, .r_gp1
    mov ax, 0x0ff8
.f_gp1: mov ds, ax
.r_gp1:
    CHECK_FAULT "gp_selector_beyond_limit", 13, 0x0ff8, .f_gp1
    EXPECT 13, .r_gp2
    mov ax, TSS_SEL
.f_gp2: mov es, ax
.r_gp2:
    CHECK_FAULT "gp_system_segment_in_es", 13, TSS_SEL, .f_gp2
    and byte [idt + 0x41*8 + 5], 0x7f   ; gate 0x41 not present
    EXPECT 11, .r_npg
.f_npg: int 0x41
.r_npg:
    CHECK_FAULT "np_idt_gate", 11, 0x41*8+2, .f_npg
    mov ax, KDATA
    mov ds, ax
    mov es, ax

    ; #DF through an interrupt gate: #GP's gate not present
    and byte [idt + 13*8 + 5], 0x7f
    EXPECT 8, .r_df
    mov ax, 0x0ff8
    mov ds, ax
.r_df:
    or byte [idt + 13*8 + 5], 0x80
    mov ax, KDATA
    mov ds, ax
    CHECK_FAULT "df_gp_with_np_gate", 8, 0, -1

    ; ---------------------------------------------------------- ring 3, IOPL 0
    mov eax, user0
    mov ebx, 0x2
    call enter_ring3
    CHECK "int80_frame_cs", [sc_cs], UCODE|3
    CHECK "int80_frame_ss", [sc_ss], UDATA|3
    CHECK "int80_frame_esp", [sc_esp], [sc_user_esp]
    CHECK "int80_ring0_stack", [sc_r0esp], r0stack_top - 20
    CHECK "int80_handler_cpl", [sc_cpl], 0
    CHECK "callgate_cpl", [cg_cpl], 0
    CHECK "callgate_caller_cs", [cg_caller_cs], UCODE|3
    CHECK "callgate_param0", [cg_p0], 7
    CHECK "callgate_param1", [cg_p1], 100
    CHECK "callgate_old_ss", [cg_old_ss], UDATA|3
    CHECK "callgate_old_esp", [cg_old_esp], [cg_user_esp]
    CHECK "callgate_ring0_stack", [cg_r0esp], r0stack_top - 24

    ; ---------------------------------------------------------- ring 3, IOPL 3
    mov eax, user3
    mov ebx, 0x3002
    call enter_ring3

    ; ---------------------------------------------------------- task switches
    call init_tss_b
    mov dword [tss_b+32], task_b_call
    mov ebp, 0x12345678
    mov esi, 0xAAAA5555
    mov edi, 0x5A5A0000
    call TSS2_SEL:0
    mov [t_ebp], ebp
    mov [t_esi], esi
    mov [t_edi], edi
    pushfd
    pop eax
    mov [t_flags], eax
    mov eax, cr0
    mov [t_cr0], eax
    clts
    str ax
    movzx eax, ax
    mov [t_tr], eax
    CHECK "task_call_ran", [tb_ran], 1
    CHECK "task_call_tr_in_task", [tb_tr], TSS2_SEL
    CHECK "task_call_nt_in_task", [tb_nt], 0x4000
    CHECK "task_call_backlink", [tb_link], TSS_SEL
    CHECK "task_call_busy_new", [tb_busy_b], 0x8b
    CHECK "task_call_busy_old", [tb_busy_main], 0x8b
    CHECK "task_call_esp_in_task", [tb_esp], tb_stack_top
    CHECK "task_call_ebp_restored", [t_ebp], 0x12345678
    CHECK "task_call_esi_restored", [t_esi], 0xAAAA5555
    CHECK "task_call_edi_restored", [t_edi], 0x5A5A0000
    mov eax, [t_flags]
    and eax, 0x4000
    CHECK "task_iret_nt_clear", eax, 0
    mov eax, [t_cr0]
    and eax, 8
    CHECK "task_switch_sets_ts", eax, 8
    CHECK "task_iret_tr", [t_tr], TSS_SEL
    movzx eax, byte [gdt + TSS2_SEL + 5]
    CHECK "task_iret_busy_cleared", eax, 0x89
    movzx eax, byte [gdt + TSS_SEL + 5]
    CHECK "task_iret_busy_main", eax, 0x8b

    call init_tss_b
    mov dword [tss_b+32], task_b_jmp
    mov dword [tb_ran], 0
    mov ebp, 0x11112222
    jmp TSS2_SEL:0
.back_from_jmp:
    mov [t_ebp], ebp
    clts
    str ax
    movzx eax, ax
    CHECK "task_jmp_tr_back", eax, TSS_SEL
    CHECK "task_jmp_ran", [tb_ran], 2
    CHECK "task_jmp_nt_in_task", [tb_nt], 0
    CHECK "task_jmp_busy_old_cleared", [tb_busy_main], 0x89
    CHECK "task_jmp_busy_new", [tb_busy_b], 0x8b
    CHECK "task_jmp_ebp_restored", [t_ebp], 0x11112222
    movzx eax, byte [gdt + TSS2_SEL + 5]
    CHECK "task_jmp_back_busy_cleared", eax, 0x89

    ; ---------------------------------------------------------- #DF through a task gate
    mov edi, tss_c
    xor eax, eax
    mov ecx, 104/4
    rep stosd
    mov dword [tss_c+32], df_task
    mov dword [tss_c+36], 0x2
    mov dword [tss_c+56], tc_stack_top
    mov word [tss_c+76], KCODE
    mov eax, cr3
    mov [tss_c+28], eax
    mov ax, KDATA
    mov [tss_c+72], ax
    mov [tss_c+80], ax
    mov [tss_c+84], ax
    mov [tss_c+88], ax
    mov [tss_c+92], ax
    mov word [tss_c+102], 104
    mov edi, TSS3_SEL
    mov eax, tss_c
    mov ebx, 103
    mov cl, 0x89
    mov ch, 0
    call set_desc
    mov eax, 8
    mov ebx, TSS3_SEL
    mov cl, 0x85
    call set_gate
    and byte [idt + 13*8 + 5], 0x7f
    mov dword [tc_err], -1
    mov ax, 0x0ff8
    mov ds, ax                          ; #GP -> #NP on delivery -> #DF -> task switch
.df_task_back:
    mov ax, KDATA
    mov ds, ax
    or byte [idt + 13*8 + 5], 0x80
    clts
    CHECK "df_task_gate_ran", [tc_ran], 1
    CHECK "df_task_gate_errcode", [tc_err], 0
    CHECK "df_task_gate_backlink", [tc_link], TSS_SEL
    CHECK "df_task_gate_nt", [tc_nt], 0x4000
    jmp finish

; fill TSS B for a fresh entry (EIP set by the caller)
init_tss_b:
    pushad
    mov edi, tss_b
    xor eax, eax
    mov ecx, 104/4
    rep stosd
    mov dword [tss_b+36], 0x2           ; EFLAGS
    mov dword [tss_b+56], tb_stack_top  ; ESP
    mov eax, cr3
    mov [tss_b+28], eax
    mov word [tss_b+76], KCODE          ; CS
    mov ax, KDATA
    mov [tss_b+72], ax                  ; ES
    mov [tss_b+80], ax                  ; SS
    mov [tss_b+84], ax                  ; DS
    mov [tss_b+88], ax                  ; FS
    mov [tss_b+92], ax                  ; GS
    mov word [tss_b+102], 104           ; no I/O bitmap (beyond limit)
    mov edi, TSS2_SEL
    mov eax, tss_b
    mov ebx, 103
    mov cl, 0x89
    mov ch, 0
    call set_desc
    popad
    ret

task_b_call:
    str ax
    movzx eax, ax
    mov [tb_tr], eax
    pushfd
    pop eax
    and eax, 0x4000
    mov [tb_nt], eax
    movzx eax, word [tss_b]
    mov [tb_link], eax
    movzx eax, byte [gdt + TSS2_SEL + 5]
    mov [tb_busy_b], eax
    movzx eax, byte [gdt + TSS_SEL + 5]
    mov [tb_busy_main], eax
    mov [tb_esp], esp
    mov dword [tb_ran], 1
    mov ebp, 0                          ; clobber: the caller's must come back
    mov esi, 0
    mov edi, 0
    iretd

task_b_jmp:
    pushfd
    pop eax
    and eax, 0x4000
    mov [tb_nt], eax
    movzx eax, byte [gdt + TSS2_SEL + 5]
    mov [tb_busy_b], eax
    movzx eax, byte [gdt + TSS_SEL + 5]
    mov [tb_busy_main], eax
    mov dword [tb_ran], 2
    mov ebp, 0
    jmp TSS_SEL:0

df_task:
    pop eax                             ; error code pushed on the #DF task's stack
    mov [tc_err], eax
    movzx eax, word [tss_c]
    mov [tc_link], eax
    pushfd
    pop eax
    and eax, 0x4000
    mov [tc_nt], eax
    mov dword [tc_ran], 1
    mov dword [tss_main+32], main.df_task_back   ; resume the faulting task elsewhere
    iretd

; call gate target: [esp] EIP, [esp+4] CS, [esp+8] p0, [esp+12] p1, [esp+16] ESP, [esp+20] SS
cg_routine:
    mov [cg_r0esp], esp
    mov eax, cs
    and eax, 3
    mov [cg_cpl], eax
    mov eax, [esp+4]
    mov [cg_caller_cs], eax
    mov eax, [esp+8]
    mov [cg_p0], eax
    mov eax, [esp+12]
    mov [cg_p1], eax
    mov eax, [esp+16]
    mov [cg_old_esp], eax
    mov eax, [esp+20]
    mov [cg_old_ss], eax
    mov eax, [esp+12]
    sub eax, [esp+8]
    retf 8

; INT 0x80: EAX = EBX*3 + 1
syscall_hook:
    mov eax, [ebp+F_CS]
    mov [sc_cs], eax
    mov eax, [ebp+F_SS]
    mov [sc_ss], eax
    mov eax, [ebp+F_ESP]
    mov [sc_esp], eax
    lea eax, [ebp+F_EIP]
    mov [sc_r0esp], eax
    mov eax, cs
    and eax, 3
    mov [sc_cpl], eax
    mov eax, [ebp+F_EBX]
    lea eax, [eax*2+eax+1]
    mov [ebp+F_EAX], eax
    ret

%assign USERMODE 1
user0:
    mov eax, cs
    and eax, 3
    CHECK "cpl3_from_cs_rpl", eax, 3
    mov [sc_user_esp], esp
    mov eax, 1
    mov ebx, 20
    int 0x80
    CHECK "int80_result", eax, 61
    mov ebx, esp
    push dword 100
    push dword 7
    mov [cg_user_esp], esp
    call CGATE_SEL:0
    CHECK "callgate_result", eax, 93
    mov ecx, esp
    CHECK "callgate_esp_restored", ecx, ebx
    EXPECT 13, .r1
.f1: cli
.r1:
    CHECK_FAULT "gp_cli_iopl0", 13, 0, .f1
    EXPECT 13, .r2
.f2: hlt
.r2:
    CHECK_FAULT "gp_hlt_ring3", 13, 0, .f2
    EXPECT 13, .r3
.f3: mov eax, cr0
.r3:
    CHECK_FAULT "gp_mov_cr0_ring3", 13, 0, .f3
    pushfd
    pop eax
    or eax, 0x3200                      ; try to set IF and IOPL=3
    push eax
    popfd
    pushfd
    pop eax
    and eax, 0x3200
    CHECK "popf_ring3_keeps_if_iopl", eax, 0
    EXPECT 13, .r4
.f4: int 0x83
.r4:
    CHECK_FAULT "gp_int_dpl0_gate", 13, 0x83*8+2, .f4
    EXPECT 13, .r5
.f5: int3
.r5:
    CHECK_FAULT "gp_int3_dpl0_gate", 13, 3*8+2, .f5
    EXPECT 13, .r6
    mov ax, KDATA
.f6: mov ds, ax
.r6:
    CHECK_FAULT "gp_load_dpl0_data_selector", 13, KDATA, .f6
    mov ax, UDATA                       ; RPL 0, DPL 3: allowed
    mov es, ax
    mov ax, es
    movzx eax, ax
    CHECK "load_dpl3_selector_rpl0", eax, UDATA
    mov ax, UDATA|3
    mov es, ax
    ; I/O bitmap
    mov dx, 0x3ff
    mov al, 0x5a
    out dx, al
    mov al, 0
    in al, dx
    movzx eax, al
    CHECK "iobitmap_allowed_port_rw", eax, 0x5a
    EXPECT 13, .r7
    mov dx, 0x3fe
.f7: in al, dx
.r7:
    CHECK_FAULT "iobitmap_denied_port", 13, 0, .f7
    EXPECT 13, .r8
    mov dx, 0x3ff
.f8: in ax, dx
.r8:
    CHECK_FAULT "iobitmap_word_crosses_denied", 13, 0, .f8
    int VEC_RING0

user3:
    cli
    mov dx, 0x3fe
    in al, dx
    pushfd
    pop eax
    and eax, 0x3000
    CHECK "iopl3_cli_in_allowed", eax, 0x3000
    int VEC_RING0
%assign USERMODE 0

section .data
align 4
bounds:       dd 10, 20
sc_cs:        dd 0
sc_ss:        dd 0
sc_esp:       dd 0
sc_user_esp:  dd 1
sc_r0esp:     dd 0
sc_cpl:       dd -1
cg_cpl:       dd -1
cg_caller_cs: dd 0
cg_p0:        dd 0
cg_p1:        dd 0
cg_old_esp:   dd 0
cg_old_ss:    dd 0
cg_user_esp:  dd 1
cg_r0esp:     dd 0
t_ebp:        dd 0
t_esi:        dd 0
t_edi:        dd 0
t_flags:      dd 0
t_cr0:        dd 0
t_tr:         dd 0
tb_ran:       dd 0
tb_tr:        dd 0
tb_nt:        dd -1
tb_link:      dd 0
tb_busy_b:    dd 0
tb_busy_main: dd 0
tb_esp:       dd 0
tc_ran:       dd 0
tc_err:       dd -1
tc_link:      dd 0
tc_nt:        dd 0

section .bss
alignb 16
tss_b:        resb 128
tss_c:        resb 128
tb_stack:     resb 4096
tb_stack_top:
tc_stack:     resb 4096
tc_stack_top:
