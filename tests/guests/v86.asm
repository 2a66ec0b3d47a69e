; v86.asm -- ox86 guest test: virtual-8086 mode.
;
; What it checks (each check prints "ok NAME" or "FAIL NAME ..."; last line PASS/FAIL;
; exit through isa-debug-exit: 0x10 = pass (QEMU status 33), 0x11 = fail (35)):
;  - entering V86 with IRETD (EFLAGS.VM=1, V86 ES/DS/FS/GS/SS/ESP on the frame),
;    once with IOPL 3 and once with IOPL 0; the PIC is masked first;
;  - IOPL 3: real-mode segment arithmetic in V86 (seg*16+off aliasing), CS value,
;    PUSHF shows IOPL=3, STI/CLI/POPF act directly on IF; INT 0x30 through a DPL3
;    32-bit interrupt gate reaches the ring-0 monitor on TSS.ESP0 with a 9-dword
;    frame (EIP, CS, EFLAGS with VM and IOPL, ESP, SS, ES, DS, FS, GS = the V86
;    values), DS/ES/FS/GS zero inside the monitor, its result returned in AX
;    after IRETD back to V86; HLT in V86 raises #GP(0); I/O in V86 is checked
;    against the TSS I/O bitmap whatever IOPL is (0x3ff allowed, 0x3fe -> #GP(0));
;  - IOPL 0: CLI, STI, PUSHF, POPF, INT 0x21, IRET each trap with #GP(0) to the
;    monitor (saved CS:EIP = the instruction), which decodes and emulates them
;    (virtual IF, 16-bit pushes/pops on the V86 stack, an INT service, IRET);
;    the order of trapped opcodes is checked; a denied IN traps and is emulated,
;    an allowed IN/OUT does not trap;
;  - leaving V86 through INT to the monitor (a DPL3 gate with IOPL 3; the #GP of
;    INT n with IOPL 0), back to the ring-0 code that entered it.

%define PROGNAME "v86"
%include "lib/common.inc"

V86_BASE equ 0x9000
V86_SEG  equ V86_BASE >> 4
V86_SS   equ 0x0700
V86_SP   equ 0x1000                     ; stack top at linear 0x8000
%define VOFF(x) ((x) - v86_start)
%define VABS(x) ((x) - v86_start + V86_BASE)

section .text
BITS 32
main:
    mov al, 0xff                        ; mask every IRQ at both PICs
    out 0x21, al
    out 0xa1, al
    mov esi, v86_start
    mov edi, V86_BASE
    mov ecx, v86_end - v86_start
    rep movsb
    mov edx, 0x3ff
    call io_allow
    mov eax, 0x30
    call stub_addr
    mov cl, 0xEE
    call set_gate
    mov eax, 0x31
    call stub_addr
    mov cl, 0xEE
    call set_gate
    mov dword [exc_hooks + 0x30*4], int30_hook
    mov dword [exc_hooks + 0x31*4], exit_hook
    mov dword [exc_hooks + 13*4], gp_monitor

    ; ---------------------------------------------------------- IOPL 3
    mov dword [log_n], 0
    mov eax, 0x00023002
    mov ebx, VOFF(v86_iopl3)
    call enter_v86
    CHECK "v86_iopl3_exited", [exit_via], 0x31
    CHECK "v86_seg_alias", [VABS(v_seg)], 0x4321
    CHECK "v86_seg_linear", [0x10010], 0x4321
    CHECK "v86_cs", [VABS(v_cs)], V86_SEG
    mov eax, [VABS(v_flags)]
    and eax, 0x3000
    CHECK "v86_pushf_iopl3", eax, 0x3000
    CHECK "v86_sti_direct", [VABS(v_sti)], 0x200
    CHECK "v86_cli_direct", [VABS(v_cli)], 0
    CHECK "v86_popf_if_direct", [VABS(v_popf)], 0x200
    CHECK "v86_int_result", [VABS(v_intret)], 11
    CHECK "v86_int_bx_seen", [i30_ebx], 0x1234
    CHECK "v86_int_frame_cs", [i30_cs], V86_SEG
    CHECK "v86_int_frame_eip", [i30_eip], VOFF(v86_after_int30)
    mov eax, [i30_eflags]
    and eax, 0x23000
    CHECK "v86_int_frame_eflags_vm_iopl", eax, 0x23000
    CHECK "v86_int_frame_ss", [i30_ss], V86_SS
    CHECK "v86_int_frame_esp", [i30_esp], V86_SP
    CHECK "v86_int_frame_es", [i30_v86es], 0x1000
    CHECK "v86_int_frame_ds", [i30_v86ds], V86_SEG
    CHECK "v86_int_frame_fs", [i30_v86fs], 0x1001
    CHECK "v86_int_frame_gs", [i30_v86gs], 0x0123
    CHECK "v86_int_monitor_segs_zero", [i30_segs], 0
    CHECK "v86_int_monitor_stack", [i30_frame], r0stack_top - 36
    CHECK "v86_io_allowed_port", [VABS(v_io)], 0x5a
    CHECK "v86_iopl3_trap_count", [log_n], 2
    CHECK "v86_iopl3_trap_opcodes", [log], 0x0000ECF4   ; HLT, IN AL,DX (denied port)
    CHECK "v86_iopl3_gp_errcodes", [gp_err_or], 0
    CHECK "v86_iopl3_denied_in_emulated", [VABS(v_denied)], 0xEE
    CHECK "v86_exit_frame_eip", [exit_eip], VOFF(v86_exit3) + 2

    ; ---------------------------------------------------------- IOPL 0
    mov dword [log_n], 0
    mov dword [log], 0
    mov dword [log+4], 0
    mov dword [exit_via], 0
    mov dword [gp_err_or], 0
    mov dword [first_gp_eip], -1
    mov dword [vif], 1
    mov eax, 0x00020002
    mov ebx, VOFF(v86_iopl0)
    call enter_v86
    CHECK "v86_iopl0_exited", [exit_via], 0xCD31
    CHECK "v86_iopl0_trap_count", [log_n], 8
    CHECK "v86_iopl0_trap_opcodes_0", [log], 0x9D9CFBFA   ; CLI STI PUSHF POPF
    CHECK "v86_iopl0_trap_opcodes_1", [log+4], 0xCDECCFCD ; INT IRET IN INT(exit)
    CHECK "v86_iopl0_gp_errcodes", [gp_err_or], 0
    CHECK "v86_iopl0_first_gp_eip", [first_gp_eip], VOFF(v86_cli0)
    CHECK "v86_iopl0_first_gp_cs", [first_gp_cs], V86_SEG
    mov eax, [VABS(v_pushf0)]
    and eax, 0x200
    CHECK "v86_emulated_pushf_vif", eax, 0x200
    CHECK "v86_emulated_int_number", [int_num], 0x21
    CHECK "v86_emulated_int_result", [VABS(v_int0)], 0x0105
    CHECK "v86_emulated_iret_target", [VABS(v_iret_ok)], 1
    CHECK "v86_emulated_iret_vif", [vif], 1
    CHECK "v86_emulated_denied_in", [VABS(v_denied0)], 0xEE
    CHECK "v86_iopl0_allowed_io", [VABS(v_io0)], 0xa5
    CHECK "v86_iopl0_stack_balanced", [exit_esp], V86_SP
    jmp finish

; enter_v86: EAX = EFLAGS (VM set), EBX = IP in V86_SEG. Returns when the monitor exits.
enter_v86:
    pushad
    mov [r0_saved_esp], esp
    push dword 0x0123                   ; GS
    push dword 0x1001                   ; FS
    push dword V86_SEG                  ; DS
    push dword 0x1000                   ; ES
    push dword V86_SS
    push dword V86_SP
    push eax
    push dword V86_SEG
    push ebx
    iretd

; records the monitor's view of INT 0x30 and returns AX*2+1
int30_hook:
    lea eax, [ebp+F_EIP]
    mov [i30_frame], eax
    mov eax, [ebp+F_DS]
    or eax, [ebp+F_ES]
    mov ecx, fs
    or eax, ecx
    mov ecx, gs
    or eax, ecx
    and eax, 0xffff
    mov [i30_segs], eax
    mov eax, [ebp+F_EBX]
    movzx eax, ax
    mov [i30_ebx], eax
%macro SAVEF 2
    mov eax, [ebp+%1]
    mov [%2], eax
%endmacro
    SAVEF F_CS, i30_cs
    SAVEF F_EIP, i30_eip
    SAVEF F_EFLAGS, i30_eflags
    SAVEF F_SS, i30_ss
    SAVEF F_ESP, i30_esp
    SAVEF F_V86ES, i30_v86es
    SAVEF F_V86DS, i30_v86ds
    SAVEF F_V86FS, i30_v86fs
    SAVEF F_V86GS, i30_v86gs
    mov eax, [ebp+F_EAX]
    lea eax, [eax*2+1]
    mov [ebp+F_EAX], ax
    ret

exit_hook:
    mov dword [exit_via], 0x31
leave_v86:
    mov eax, [ebp+F_EIP]
    mov [exit_eip], eax
    mov eax, [ebp+F_ESP]
    mov [exit_esp], eax
    jmp ring3_exit_hook

; #GP monitor for V86 code: decode at CS*16+EIP, log the opcode, emulate
gp_monitor:
    test dword [ebp+F_EFLAGS], 0x20000
    jz unexpected
    mov eax, [ebp+F_ERR]
    or [gp_err_or], eax
    cmp dword [first_gp_eip], -1
    jne .notfirst
    mov eax, [ebp+F_EIP]
    mov [first_gp_eip], eax
    mov eax, [ebp+F_CS]
    mov [first_gp_cs], eax
.notfirst:
    movzx esi, word [ebp+F_CS]
    shl esi, 4
    movzx eax, word [ebp+F_EIP]
    add esi, eax                        ; linear address of the instruction
    movzx edi, word [ebp+F_SS]
    shl edi, 4                          ; V86 stack segment base
    movzx ebx, word [ebp+F_ESP]         ; SP
    movzx eax, byte [esi]
    mov ecx, [log_n]
    cmp ecx, 8
    jae .nolog
    mov [log+ecx], al
.nolog:
    inc dword [log_n]
    cmp al, 0xFA
    je .cli
    cmp al, 0xFB
    je .sti
    cmp al, 0x9C
    je .pushf
    cmp al, 0x9D
    je .popf
    cmp al, 0xCD
    je .int
    cmp al, 0xCF
    je .iret
    cmp al, 0xEC
    je .in
    cmp al, 0xF4
    je .skip1
    jmp unexpected
.cli:
    mov dword [vif], 0
    jmp .skip1
.sti:
    mov dword [vif], 1
    jmp .skip1
.pushf:
    mov eax, [ebp+F_EFLAGS]
    and eax, 0x0DD5                     ; arithmetic flags + DF
    or eax, 2
    cmp dword [vif], 0
    je .pf1
    or eax, 0x200
.pf1:
    sub bx, 2
    mov [edi+ebx], ax
    mov [ebp+F_ESP], bx
    jmp .skip1
.popf:
    movzx eax, word [edi+ebx]
    add bx, 2
    mov [ebp+F_ESP], bx
    call .setflags
    jmp .skip1
.int:
    movzx eax, byte [esi+1]
    cmp al, 0x31
    jne .int_service
    mov dword [exit_via], 0xCD31
    add dword [ebp+F_EIP], 2
    jmp leave_v86
.int_service:
    mov [int_num], eax
    add word [ebp+F_EAX], 0x100
    add word [ebp+F_EIP], 2
    ret
.iret:
    movzx eax, word [edi+ebx]
    mov [ebp+F_EIP], eax
    movzx eax, word [edi+ebx+2]
    mov [ebp+F_CS], eax
    movzx eax, word [edi+ebx+4]
    add bx, 6
    mov [ebp+F_ESP], bx
    call .setflags
    ret
.in:
    mov byte [ebp+F_EAX], 0xEE
.skip1:
    inc word [ebp+F_EIP]
    ret
.setflags:                              ; EAX = 16-bit flags image from the V86 stack
    mov ecx, eax
    and ecx, 0x200
    shr ecx, 9
    mov [vif], ecx
    and eax, 0x0DD5
    and dword [ebp+F_EFLAGS], ~0x0DD5
    or [ebp+F_EFLAGS], eax
    ret

; ====================================================================== V86 code
; copied to V86_BASE, runs with CS = DS = V86_SEG
BITS 16
v86_start:
v86_iopl3:
    mov ax, 0x1000
    mov es, ax
    mov word [es:0x10], 0x4321
    mov ax, 0x1001
    mov fs, ax
    mov ax, [fs:0]
    mov [VOFF(v_seg)], ax
    mov ax, cs
    mov [VOFF(v_cs)], ax
    pushf
    pop ax
    mov [VOFF(v_flags)], ax
    sti
    pushf
    pop ax
    and ax, 0x200
    mov [VOFF(v_sti)], ax
    cli
    pushf
    pop ax
    and ax, 0x200
    mov [VOFF(v_cli)], ax
    push word 0x0202
    popf
    pushf
    pop ax
    and ax, 0x200
    mov [VOFF(v_popf)], ax
    cli
    mov ax, 5
    mov bx, 0x1234
    int 0x30
v86_after_int30:
    mov [VOFF(v_intret)], ax
    hlt                                 ; #GP(0) even with IOPL 3
    mov dx, 0x3ff
    mov al, 0x5a
    out dx, al
    mov al, 0
    in al, dx
    mov [VOFF(v_io)], al
    mov dx, 0x3fe
    in al, dx                           ; denied in the bitmap: #GP, emulated as AL=0xEE
    mov [VOFF(v_denied)], al
v86_exit3:
    int 0x31

v86_iopl0:
v86_cli0:
    cli
    sti
    pushf
    pop ax
    mov [VOFF(v_pushf0)], ax
    mov ax, 0x0002
    push ax
    popf
    mov ax, 5
    int 0x21
    mov [VOFF(v_int0)], ax
    push word 0x0202
    push cs
    push word VOFF(v86_iret_target)
    iret
    jmp v86_exit0                       ; not reached if IRET was emulated
v86_iret_target:
    mov word [VOFF(v_iret_ok)], 1
    mov dx, 0x3fe
    in al, dx
    mov [VOFF(v_denied0)], al
    mov dx, 0x3ff
    mov al, 0xa5
    out dx, al
    mov al, 0
    in al, dx
    mov [VOFF(v_io0)], al
v86_exit0:
    int 0x31

align 4
v_seg:     dd 0
v_cs:      dd 0
v_flags:   dd 0
v_sti:     dd 0xffff
v_cli:     dd 0xffff
v_popf:    dd 0xffff
v_intret:  dd 0
v_io:      dd 0
v_denied:  dd 0
v_pushf0:  dd 0
v_int0:    dd 0
v_iret_ok: dd 0
v_denied0: dd 0
v_io0:     dd 0
v86_end:
BITS 32

section .data
align 4
log:        dd 0, 0
log_n:      dd 0
vif:        dd 1
gp_err_or:  dd 0
first_gp_eip: dd -1
first_gp_cs: dd -1
int_num:    dd 0
exit_via:   dd 0
exit_eip:   dd 0
exit_esp:   dd 0
i30_frame:  dd 0
i30_segs:   dd -1
i30_ebx:    dd 0
i30_cs:     dd 0
i30_eip:    dd 0
i30_eflags: dd 0
i30_ss:     dd 0
i30_esp:    dd 0
i30_v86es:  dd 0
i30_v86ds:  dd 0
i30_v86fs:  dd 0
i30_v86gs:  dd 0
