; modes.asm -- ox86 guest test: CPU mode switches, real mode, paging.
;
; What it checks (each check prints "ok NAME" or "FAIL NAME ..."; last line PASS/FAIL;
; exit through isa-debug-exit: 0x10 = pass (QEMU status 33), 0x11 = fail (35)):
;  - starts in the Multiboot 32-bit state, loads its own GDT/IDT/TSS (lib/common.inc);
;  - 16-bit protected mode (CS/SS from 16-bit descriptors: PUSH moves SP by 2);
;  - real mode (CR0.PE=0, far jmp to reload CS): segment arithmetic (seg*16+off,
;    aliasing through different seg:off pairs), 16-bit offset wrap-around
;    ([bx+si] = 0x10001 -> 0x0001), a real-mode IVT handler invoked with INT 0x40
;    (pushed IP/CS/FLAGS, handler CS, IRET restores flags), #DE from DIV by zero
;    and from quotient overflow through IVT vector 0 (pushed IP = the DIV),
;    REP MOVSB / REPE CMPSB / REPNE SCASB / REP STOSW / STD + REP MOVSW (overlap),
;    O32 REP MOVSD: counts and final SI/DI/CX/ZF, memory contents;
;  - back to 32-bit protected mode (far jmp with 32-bit offset from 16-bit code);
;  - 32-bit paging with CR4.PSE: 4 KiB pages plus a 4 MiB page aliasing physical
;    0, alias reads/writes in both directions, accessed/dirty bits set by the CPU
;    in a PTE, a PDE and a 4 MiB PDE; #PF on not-present read/write (CR2, error
;    code 0/2), supervisor write to a read-only page with CR0.WP=0 (allowed) and
;    WP=1 (#PF err 3), ring-3 write to a read-only user page (err 7), ring-3 read
;    of a not-present page (err 4) and of a supervisor page (err 5); INVLPG and
;    a CR3 reload after changing a PTE;
;  - PAE paging (CR4.PAE, PDPT, 2 MiB pages and 4 KiB pages with 64-bit
;    entries): mapping checks, alias, dirty bit, #PF not present (CR2, err 0),
;    write to read-only with WP (err 3).
;  Not checked: reserved-bit #PF (QEMU 7.2 reports error code 8 for a PTE with
;  bit 63 set and EFER.NXE=0, where hardware sets P|RSVD = 9).

%define PROGNAME "modes"
%include "lib/common.inc"

RM_BASE   equ 0x8000                  ; real-mode blob is copied here
%define RM(x) ((x) - rm_start + RM_BASE)
SRC       equ 0x5000
DST       equ 0x5200
BUF       equ 0x5400
BUF2      equ 0x5600
BUF3      equ 0x5800

section .text
BITS 32
main:
    ; ---------------------------------------------------------- to real mode and back
    mov esi, rm_start
    mov edi, RM_BASE
    mov ecx, rm_end - rm_start
    rep movsb
    mov [saved_esp], esp
    jmp CODE16:RM(pm16_entry)
pm32_back:
    mov ax, KDATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, [saved_esp]
    lidt [idtr]
    CHECK "pm16_push_size", [RM(r_pm16_push)], 2
    CHECK "pm16_cs", [RM(r_pm16_cs)], CODE16
    CHECK "rm_cs", [RM(r_rm_cs)], 0
    mov eax, [RM(r_rm_cr0)]
    and eax, 0x80000001
    CHECK "rm_cr0_pe_clear", eax, 0
    CHECK "rm_seg_alias_1", [RM(r_seg1)], 0xBEEF
    CHECK "rm_seg_alias_2", [RM(r_seg2)], 0xBEEF
    CHECK "rm_seg_linear", [0x12350], 0xBEEF
    CHECK "rm_offset_wrap", [RM(r_wrap)], 0x5A
    CHECK "rm_int_ip", [RM(r_int40_ip)], RM(int40_ret)
    CHECK "rm_int_cs", [RM(r_int40_cs)], 0
    mov eax, [RM(r_flags_before)]
    CHECK "rm_int_flags_pushed", [RM(r_int40_fl)], eax
    CHECK "rm_int_flags_restored", [RM(r_flags_after)], eax
    and eax, 1
    CHECK "rm_int_cf_before", eax, 1
    CHECK "rm_int_handler_cs", [RM(r_int40_mycs)], RM_BASE >> 4
    mov eax, [RM(r_int40_inflags)]
    and eax, 0x301                    ; TF, IF cleared; CF kept
    CHECK "rm_int_handler_flags", eax, 1
    CHECK "rm_int_result", [RM(r_int40_ax)], 0x2223
    CHECK "rm_de_count", [RM(r_de_cnt)], 2
    CHECK "rm_de_ip_div0", [RM(r_de_ip1)], RM(de_instr1)
    CHECK "rm_de_ip_overflow", [RM(r_de_ip2)], RM(de_instr2)
    CHECK "rm_de_cs", [RM(r_de_cs)], 0
    CHECK "rm_movsb_cx", [RM(r_movsb_cx)], 0
    CHECK "rm_movsb_si", [RM(r_movsb_si)], SRC+100
    CHECK "rm_movsb_di", [RM(r_movsb_di)], DST+100
    CHECK "rm_movsb_data", [DST+96], [SRC+96]
    CHECK "rm_repe_cmpsb_equal_cx", [RM(r_cmpeq_cx)], 0
    CHECK "rm_repe_cmpsb_equal_zf", [RM(r_cmpeq_zf)], 0x40
    CHECK "rm_repe_cmpsb_mismatch_cx", [RM(r_cmpne_cx)], 62
    CHECK "rm_repe_cmpsb_mismatch_si", [RM(r_cmpne_si)], SRC+38
    CHECK "rm_repe_cmpsb_mismatch_di", [RM(r_cmpne_di)], DST+38
    CHECK "rm_repe_cmpsb_mismatch_zf", [RM(r_cmpne_zf)], 0
    CHECK "rm_repne_scasb_cx", [RM(r_scas_cx)], 89
    CHECK "rm_repne_scasb_di", [RM(r_scas_di)], SRC+11
    CHECK "rm_repne_scasb_zf", [RM(r_scas_zf)], 0x40
    CHECK "rm_rep_stosw_di", [RM(r_stos_di)], BUF+16
    CHECK "rm_rep_stosw_last", [BUF+12], 0xA55AA55A
    CHECK "rm_rep_stosw_after", [BUF+16], 0x1234
    CHECK "rm_std_movsw_w01", [BUF2], 0x00020001
    CHECK "rm_std_movsw_w23", [BUF2+4], 0x00020001
    CHECK "rm_std_movsw_w45", [BUF2+8], 0x00040003
    CHECK "rm_std_movsw_si", [RM(r_stdmov_si)], BUF2-2
    CHECK "rm_std_movsw_di", [RM(r_stdmov_di)], BUF2+2
    CHECK "rm_o32_movsd_ecx", [RM(r_movsd_ecx)], 0
    CHECK "rm_o32_movsd_data", [BUF3+0x100+12], [BUF3+12]
    CHECK "rm_o32_movsd_di", [RM(r_movsd_di)], BUF3+0x100+16

    ; ---------------------------------------------------------- 32-bit paging
    mov eax, 1
    cpuid
    mov [cpuid_edx], edx
    mov eax, edx
    and eax, (1<<3)|(1<<6)
    CHECK "cpuid_pse_pae", eax, (1<<3)|(1<<6)

    mov dword [pg_a], 0x11111111
    mov dword [pg_b], 0x22222222
    mov dword [pg_c], 0x33333333
    mov edi, pt0
    mov eax, 7
    mov ecx, 1024
.fill:
    stosd
    add eax, 4096
    loop .fill
    mov dword [pd], pt0 + 7
    mov dword [pd+4], 0x00000087                  ; 4 MiB page: linear 4M -> phys 0
    mov dword [pd+8], pt2 + 7
    mov dword [pt2], pg_a + 7                     ; 0x800000 user RW
    mov dword [pt2+4], 0                          ; 0x801000 not present
    mov dword [pt2+8], pg_b + 5                   ; 0x802000 user RO
    mov dword [pt2+12], pg_a + 3                  ; 0x803000 supervisor RW (INVLPG)
    mov dword [pt2+16], pg_a + 3                  ; 0x804000 supervisor RW
    mov eax, pd
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10                                  ; PSE
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    jmp .pg_on
.pg_on:
    CHECK "pg_identity", [pg_a], 0x11111111
    mov eax, [pt2]
    and eax, 0x60
    CHECK "pg_pte_ad_initially_clear", eax, 0
    mov eax, [0x800000]
    CHECK "pg_4k_alias_read", eax, 0x11111111
    mov eax, [pt2]
    and eax, 0x60
    CHECK "pg_pte_accessed_after_read", eax, 0x20
    mov eax, [pd+8]
    and eax, 0x20
    CHECK "pg_pde_accessed", eax, 0x20
    mov dword [0x800000+8], 0x77777777
    mov eax, [pt2]
    and eax, 0x60
    CHECK "pg_pte_dirty_after_write", eax, 0x60
    CHECK "pg_4k_alias_write", [pg_a+8], 0x77777777

    mov eax, [pd+4]
    and eax, 0x60
    CHECK "pg_pse_ad_initially_clear", eax, 0
    mov eax, [0x400000 + pg_c]
    CHECK "pg_pse_alias_read", eax, 0x33333333
    mov eax, [pd+4]
    and eax, 0x60
    CHECK "pg_pse_accessed", eax, 0x20
    mov dword [0x400000 + pg_c + 4], 0x5555AAAA
    CHECK "pg_pse_alias_write", [pg_c+4], 0x5555AAAA
    mov eax, [pd+4]
    and eax, 0x60
    CHECK "pg_pse_dirty", eax, 0x60

    EXPECT 14, .r1
.f1: mov eax, [0x801000]
.r1:
    CHECK_FAULT "pf_notpresent_read", 14, 0, .f1
    CHECK "pf_notpresent_read_cr2", [got_cr2], 0x801000
    EXPECT 14, .r2
.f2: mov dword [0x801ffc], 1
.r2:
    CHECK_FAULT "pf_notpresent_write", 14, 2, .f2
    CHECK "pf_notpresent_write_cr2", [got_cr2], 0x801ffc
    mov dword [0x802008], 0x44
    CHECK "wp0_supervisor_write_ro", [pg_b+8], 0x44
    mov eax, cr0
    or eax, 0x10000                               ; WP
    mov cr0, eax
    EXPECT 14, .r3
.f3: mov dword [0x80200c], 0x55
.r3:
    CHECK_FAULT "pf_wp1_supervisor_write_ro", 14, 3, .f3
    CHECK "pf_wp1_cr2", [got_cr2], 0x80200c
    CHECK "pf_wp1_not_written", [pg_b+12], 0
    mov eax, cr0
    and eax, ~0x10000
    mov cr0, eax

    mov eax, user_pf
    mov ebx, 0x2                                  ; IOPL 0
    call enter_ring3

    ; INVLPG / CR3 reload
    mov eax, [0x803000]
    CHECK "invlpg_before", eax, 0x11111111
    mov dword [pt2+12], pg_b + 3
    invlpg [0x803000]
    mov eax, [0x803000]
    CHECK "invlpg_after", eax, 0x22222222
    mov dword [pt2+12], pg_c + 3
    mov eax, cr3
    mov cr3, eax
    mov eax, [0x803000]
    CHECK "cr3_reload_flush", eax, 0x33333333

    ; ---------------------------------------------------------- PAE paging
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    jmp .pg_off
.pg_off:
    mov dword [pdpt], pae_pd + 1
    mov dword [pae_pd], 0x00000087                ; 2 MiB identity (kernel lives here)
    mov dword [pae_pd+8], pae_pt + 7              ; 0x200000: 4 KiB pages
    mov dword [pae_pd+16], 0x00000087             ; 0x400000 -> phys 0 (2 MiB alias)
    mov dword [pae_pt], pg_b + 7                  ; 0x200000 -> pg_b
    mov dword [pae_pt+8], 0                       ; 0x201000 not present
    mov dword [pae_pt+16], pg_a + 5               ; 0x202000 read-only
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, pdpt
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000                            ; PG | WP
    mov cr0, eax
    jmp .pae_on
.pae_on:
    mov eax, [0x200000]
    CHECK "pae_4k_map", eax, 0x22222222
    mov eax, [0x400000 + pg_c]
    CHECK "pae_2m_alias", eax, 0x33333333
    mov eax, [pae_pt]
    and eax, 0x60
    CHECK "pae_pte_accessed", eax, 0x20
    mov dword [0x200000+16], 0x99
    CHECK "pae_write_through_map", [pg_b+16], 0x99
    mov eax, [pae_pt]
    and eax, 0x60
    CHECK "pae_pte_dirty", eax, 0x60
    CHECK "pae_pte_high_unchanged", [pae_pt+4], 0
    EXPECT 14, .r4
.f4: mov eax, [0x201234]
.r4:
    CHECK_FAULT "pae_pf_notpresent", 14, 0, .f4
    CHECK "pae_pf_cr2", [got_cr2], 0x201234
    EXPECT 14, .r5
.f5: mov dword [0x202000], 1
.r5:
    CHECK_FAULT "pae_pf_write_ro", 14, 3, .f5
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    jmp finish

; ring-3 part of the paging tests (32-bit paging on)
%assign USERMODE 1
user_pf:
    mov eax, [0x802000]
    CHECK "user_read_ro_page", eax, 0x22222222
    EXPECT 14, .r1
.f1: mov dword [0x802010], 1
.r1:
    CHECK_FAULT "pf_user_write_ro", 14, 7, .f1
    CHECK "pf_user_write_ro_cr2", [got_cr2], 0x802010
    CHECK "pf_user_cs", [got_cs], UCODE|3
    EXPECT 14, .r2
.f2: mov eax, [0x801008]
.r2:
    CHECK_FAULT "pf_user_read_notpresent", 14, 4, .f2
    CHECK "pf_user_read_notpresent_cr2", [got_cr2], 0x801008
    EXPECT 14, .r3
.f3: mov eax, [0x804000]
.r3:
    CHECK_FAULT "pf_user_read_supervisor", 14, 5, .f3
    int VEC_RING0
%assign USERMODE 0

; ====================================================================== 16-bit code
; Copied to RM_BASE; every absolute reference goes through RM().
BITS 16
rm_start:
pm16_entry:
    mov ax, DATA16
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov sp, 0x7000
    mov bx, sp
    push ax
    sub bx, sp
    pop ax
    mov [RM(r_pm16_push)], bx
    mov ax, cs
    mov [RM(r_pm16_cs)], ax
    mov eax, cr0
    and eax, 0x7ffffffe
    mov cr0, eax
    jmp 0:RM(rm_entry)
rm_entry:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov sp, 0x7000
    lidt [RM(rm_idtr)]
    mov ax, cs
    mov [RM(r_rm_cs)], ax
    mov eax, cr0
    mov [RM(r_rm_cr0)], eax

    ; segment arithmetic
    mov ax, 0x1234
    mov ds, ax
    mov word [0x10], 0xBEEF             ; linear 0x12350
    mov ax, 0x1235
    mov es, ax
    mov ax, [es:0]
    mov [cs:RM(r_seg1)], ax
    mov ax, 0x1000
    mov fs, ax
    mov ax, [fs:0x2350]
    mov [cs:RM(r_seg2)], ax
    mov ax, 0x2000
    mov ds, ax
    mov byte [1], 0x5A
    mov byte [0], 0
    mov bx, 0xFFFF
    mov si, 2
    mov al, [bx+si]                     ; 0x2000:(0xFFFF+2 mod 64K)
    mov [cs:RM(r_wrap)], al
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov fs, ax

    ; IVT: INT 0x40 and #DE (vector 0) handlers at CS = RM_BASE>>4
    mov word [0x40*4], int40_handler - rm_start
    mov word [0x40*4+2], RM_BASE >> 4
    mov word [0*4], de_handler - rm_start
    mov word [0*4+2], RM_BASE >> 4
    mov ax, 0x1111
    stc
    pushf
    pop word [RM(r_flags_before)]
    int 0x40
int40_ret:
    pushf
    pop word [RM(r_flags_after)]
    mov [RM(r_int40_ax)], ax

    mov ax, 100
    xor bl, bl
de_instr1:
    div bl                              ; divide by zero
    mov ax, 0x1000
    mov bl, 2
de_instr2:
    div bl                              ; quotient 0x800 does not fit in AL

    ; string operations (DS = ES = 0)
    cld
    mov di, SRC
    mov cx, 100
    mov al, 3
.fill:
    stosb
    add al, 7
    loop .fill
    mov si, SRC
    mov di, DST
    mov cx, 100
    rep movsb
    mov [RM(r_movsb_cx)], cx
    mov [RM(r_movsb_si)], si
    mov [RM(r_movsb_di)], di
    mov si, SRC
    mov di, DST
    mov cx, 100
    repe cmpsb
    mov [RM(r_cmpeq_cx)], cx
    pushf
    pop ax
    and ax, 0x40
    mov [RM(r_cmpeq_zf)], ax
    mov byte [DST+37], 0xEE
    mov si, SRC
    mov di, DST
    mov cx, 100
    repe cmpsb
    mov [RM(r_cmpne_cx)], cx
    mov [RM(r_cmpne_si)], si
    mov [RM(r_cmpne_di)], di
    pushf
    pop ax
    and ax, 0x40
    mov [RM(r_cmpne_zf)], ax
    mov di, SRC
    mov cx, 100
    mov al, 73                          ; SRC[10] = 10*7+3
    repne scasb
    mov [RM(r_scas_cx)], cx
    mov [RM(r_scas_di)], di
    pushf
    pop ax
    and ax, 0x40
    mov [RM(r_scas_zf)], ax
    mov word [BUF+16], 0x1234
    mov word [BUF+18], 0
    mov di, BUF
    mov cx, 8
    mov ax, 0xA55A
    rep stosw
    mov [RM(r_stos_di)], di
    mov di, BUF2                        ; words 1..6
    mov ax, 1
    mov cx, 6
.fill2:
    stosw
    inc ax
    loop .fill2
    std
    mov si, BUF2+6
    mov di, BUF2+10
    mov cx, 4
    rep movsw                           ; overlapping backward move -> 1 2 1 2 3 4
    cld
    mov [RM(r_stdmov_si)], si
    mov [RM(r_stdmov_di)], di
    mov di, BUF3
    mov eax, 0x01020304
    mov cx, 4
.fill3:
    stosd
    add eax, 0x11111111
    loop .fill3
    mov si, BUF3
    mov di, BUF3+0x100
    mov ecx, 4
    rep movsd                           ; 16-bit address size: CX counts, SI/DI advance by 4
    mov [RM(r_movsd_ecx)], ecx
    mov [RM(r_movsd_di)], di

    ; back to 32-bit protected mode
    cli
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword KCODE:pm32_back

int40_handler:                           ; runs with CS = RM_BASE>>4
    pushf                               ; flags as the handler sees them
    push bp
    mov bp, sp
    push ds
    push bx
    xor bx, bx
    mov ds, bx
    mov bx, [bp+2]
    mov [RM(r_int40_inflags)], bx
    add bp, 2
    mov bx, [bp+2]
    mov [RM(r_int40_ip)], bx
    mov bx, [bp+4]
    mov [RM(r_int40_cs)], bx
    mov bx, [bp+6]
    mov [RM(r_int40_fl)], bx
    mov bx, cs
    mov [RM(r_int40_mycs)], bx
    add ax, ax
    inc ax
    pop bx
    pop ds
    pop bp
    popf
    iret

de_handler:
    push bp
    mov bp, sp
    push ds
    push bx
    xor bx, bx
    mov ds, bx
    mov bx, [bp+2]
    cmp word [RM(r_de_cnt)], 0
    jne .second
    mov [RM(r_de_ip1)], bx
    jmp .both
.second:
    mov [RM(r_de_ip2)], bx
.both:
    inc word [RM(r_de_cnt)]
    mov bx, [bp+4]
    mov [RM(r_de_cs)], bx
    add word [bp+2], 2                  ; skip the 2-byte DIV
    pop bx
    pop ds
    pop bp
    iret

align 4
rm_idtr:      dw 0x3ff
              dd 0
r_pm16_push:  dd 0
r_pm16_cs:    dd 0
r_rm_cs:      dd 0xffff
r_rm_cr0:     dd 0xffffffff
r_seg1:       dd 0
r_seg2:       dd 0
r_wrap:       dd 0
r_flags_before: dd 0
r_flags_after: dd 0
r_int40_ip:   dd 0
r_int40_cs:   dd 0xffff
r_int40_fl:   dd 0
r_int40_mycs: dd 0
r_int40_inflags: dd 0
r_int40_ax:   dd 0
r_de_cnt:     dd 0
r_de_ip1:     dd 0
r_de_ip2:     dd 0
r_de_cs:      dd 0xffff
r_movsb_cx:   dd 0xffff
r_movsb_si:   dd 0
r_movsb_di:   dd 0
r_cmpeq_cx:   dd 0xffff
r_cmpeq_zf:   dd 0
r_cmpne_cx:   dd 0
r_cmpne_si:   dd 0
r_cmpne_di:   dd 0
r_cmpne_zf:   dd 0xffff
r_scas_cx:    dd 0
r_scas_di:    dd 0
r_scas_zf:    dd 0
r_stos_di:    dd 0
r_stdmov_si:  dd 0
r_stdmov_di:  dd 0
r_movsd_ecx:  dd 0xffffffff
r_movsd_di:   dd 0
rm_end:
BITS 32

section .data
saved_esp: dd 0
cpuid_edx: dd 0

section .bss.pages nobits alloc noexec write align=4096
pd:     resb 4096
pt0:    resb 4096
pt2:    resb 4096
pg_a:   resb 4096
pg_b:   resb 4096
pg_c:   resb 4096
pdpt:   resb 4096
pae_pd: resb 4096
pae_pt: resb 4096
