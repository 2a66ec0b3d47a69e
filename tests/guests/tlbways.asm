; tlbways.asm -- ox86 guest test: pages of data that share a TLB index.
;
; Pages 4 MiB apart map to the same entry of a 1024-entry direct-mapped TLB. A loop
; alternating between two such pages must not miss the TLB on every access (ox86's
; data TLB has two ways), and a loop over three of them must still compute the right
; values while the ways evict one another. Paging is off (the TLB still caches the
; identity mapping). Expected values are plain arithmetic, checked under QEMU too.
;
; What it checks (each check prints "ok NAME" or "FAIL NAME ..."; last line PASS/FAIL):
;  - two pages, 200000 iterations of: EAX += [A]; [B+16] += EAX: EAX = 200000 and
;    [B+16] = 200000 * 200001 / 2 mod 2^32;
;  - three pages, 1000 iterations of: [A] += 1; [B+4] += 2; [C+8] += 3.
; tests/guests.rs also runs it with --stats and checks that the two-page loop did not
; miss the TLB on every access.

%define PROGNAME "tlbways"
%include "lib/common.inc"

PAGE_A equ 0x1006000
PAGE_B equ 0x1406000     ; 4 MiB after A: the same TLB index
PAGE_C equ 0x1806000     ; 8 MiB after A: the same TLB index

main:
    mov dword [PAGE_A], 1
    mov dword [PAGE_B + 16], 0
    mov ecx, 200000
    xor eax, eax
.two:
    add eax, [PAGE_A]
    add [PAGE_B + 16], eax
    dec ecx
    jnz .two
    CHECK "two_pages_eax", eax, 200000
    CHECK "two_pages_sum", [PAGE_B + 16], 0xa8194ea0

    mov dword [PAGE_A], 0
    mov dword [PAGE_B + 4], 0
    mov dword [PAGE_C + 8], 0
    mov ecx, 1000
.three:
    add dword [PAGE_A], 1
    add dword [PAGE_B + 4], 2
    add dword [PAGE_C + 8], 3
    dec ecx
    jnz .three
    CHECK "three_pages_a", [PAGE_A], 1000
    CHECK "three_pages_b", [PAGE_B + 4], 2000
    CHECK "three_pages_c", [PAGE_C + 8], 3000
    jmp finish
