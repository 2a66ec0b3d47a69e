; c/entry.asm -- Multiboot entry for the bare-metal C program (cprog.c).
; Uses lib/common.inc (GDT/IDT/TSS, serial, exception reporting), enables the x87
; (CR0: EM=0, MP=1, NE=1, TS=0; FNINIT -> control word 0x037f as on Linux), calls
; cprog_run(), and finishes: "PASS" + port 0xf4 <- 0x10 when it returns 0,
; otherwise "FAIL" + 0x11.  The C program prints its own lines first.
%define PROGNAME "c"
%include "lib/common.inc"

extern cprog_run
global guest_putc

section .text
BITS 32
main:
    mov eax, cr0
    and eax, ~((1 << 2) | (1 << 3))     ; EM = 0, TS = 0
    or eax, (1 << 1) | (1 << 5)         ; MP = 1, NE = 1
    mov cr0, eax
    fninit
    call cprog_run
    test eax, eax
    jz .ok
    inc dword [fail_count]
.ok:
    jmp finish

; void guest_putc(int c)
guest_putc:
    mov eax, [esp+4]
    call putc
    ret
