//! The built-in demo guest: what `ox86 run` boots when given no image.
//!
//! It is assembled here, in Rust, with iced-x86's `CodeAssembler`, and walks a PC
//! through the classic start-up path while talking over COM1:
//!
//! 1. real mode at 0000:7E00: sets up the segments, a stack and the 16550 UART,
//!    prints a banner and its CS:IP, opens the A20 gate (port 0x92);
//! 2. loads a GDT and enters 32-bit protected mode with flat segments;
//! 3. builds 32-bit page tables (the first 4 MiB identity-mapped with 4 KiB pages,
//!    the same page table aliased at 0xC0000000), turns paging on, and shows that
//!    the alias reads and writes the same memory and that code runs from it;
//! 4. computes the primes below 1000 with a sieve, Fibonacci numbers and the CRC-32
//!    of a sentence, prints them in decimal/hex and checks each against the known
//!    answer;
//! 5. writes to QEMU's isa-debug-exit port 0xF4: value 0 when every check passed,
//!    so the emulator exits with status `(0 << 1) | 1 = 1` ([`DEMO_EXIT_STATUS`]);
//!    value 1 (status 3) when a check failed. Without that device it halts.
//!
//! The image is also a bootable disk: its first sector is an MBR boot loader that
//! reads the rest with INT 13h and jumps to 0000:7E00, so QEMU with SeaBIOS can boot
//! it and confirm the output. ox86 needs no BIOS: it loads the image at 0x7C00 and
//! enters at 0000:7E00 directly, never running the boot sector.
//!
//! The demo runs with interrupts off throughout and uses no BIOS services.

use std::collections::HashMap;

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use crate::entry::EntryState;

/// Physical address where the demo image is loaded (its boot sector's address).
pub const DEMO_LOAD_ADDR: u64 = 0x7c00;
/// The real-mode entry point (0000:7E00), just after the boot sector.
const ENTRY16: u64 = 0x7e00;
/// The host exit status of an emulator with an isa-debug-exit device at 0xF4
/// after the demo passed all its checks (it writes 0: status `(0 << 1) | 1`).
pub const DEMO_EXIT_STATUS: i32 = 1;
/// What the demo prints on COM1, recorded from QEMU 7.2 (SeaBIOS booting the image
/// as a disk, `tests/demo_qemu.rs` checks it still matches); lines end in CR LF.
pub const DEMO_SERIAL_OUTPUT: &str = include_str!("../tests/fixtures/demo_serial.txt");

/// COM1 registers.
const COM1: u32 = 0x3f8;
const COM1_IER: u32 = COM1 + 1;
const COM1_FCR: u32 = COM1 + 2;
const COM1_LCR: u32 = COM1 + 3;
const COM1_MCR: u32 = COM1 + 4;
const COM1_LSR: u32 = COM1 + 5;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THRE: u32 = 0x20;
/// QEMU's isa-debug-exit port.
const DEBUG_EXIT_PORT: u32 = 0xf4;
/// System control port A (fast A20 gate).
const PORT_A: u32 = 0x92;

/// GDT selectors.
const SEL_CODE32: u16 = 0x08;
const SEL_DATA32: u32 = 0x10;
/// Physical addresses of the page directory, the page table and the sieve buffer.
const PAGE_DIR: u32 = 0x2_0000;
const PAGE_TABLE: u32 = 0x2_1000;
const SIEVE: u32 = 0x3_0000;
/// Physical address of the demo's variables: the alias test word and the failure count.
const VARS: u32 = 0x2_2000;
const MAGIC: u32 = VARS;
const FAILURES: u32 = VARS + 4;
/// The higher-half alias of physical address 0.
const ALIAS: u32 = 0xc000_0000;
/// Real-mode stack top (grows down below the boot sector).
const STACK: u32 = 0x7c00;
/// Sectors a single CHS read may cover (one track of 63 sectors, minus the MBR).
const MAX_SECTORS: u64 = 62;

/// The sentence whose CRC-32 the demo computes, and the known answer.
const FOX: &str = "The quick brown fox jumps over the lazy dog";
const FOX_CRC32: u32 = 0x414f_a339;

/// Returns the demo image, its load address and the CPU state to enter it with
/// (real mode, CS=DS=ES=SS=0, IP=0x7E00, SP=0x7C00).
pub fn demo_image() -> (Vec<u8>, u64, EntryState) {
    let bytes =
        assemble().unwrap_or_else(|e| panic!("the built-in demo does not assemble: {}", e.0));
    (
        bytes,
        DEMO_LOAD_ADDR,
        EntryState::real(0, ENTRY16 as u16, STACK as u16),
    )
}

/// Why assembling the demo failed (a bug in this file, caught by its tests).
#[derive(Debug)]
struct DemoError(String);

impl DemoError {
    fn msg(s: &str) -> DemoError {
        DemoError(s.to_string())
    }
}

impl From<IcedError> for DemoError {
    fn from(e: IcedError) -> DemoError {
        DemoError(e.to_string())
    }
}

/// The addresses of named labels, from the previous assembly pass.
type Symbols = HashMap<String, u64>;

/// Assembles until every label address is stable (absolute addresses of data and
/// of the other stage are only known after a first pass).
fn assemble() -> Result<Vec<u8>, DemoError> {
    let mut known = Symbols::new();
    for _ in 0..8 {
        let (image, found) = build(&known)?;
        if found == known {
            return Ok(image);
        }
        known = found;
    }
    Err(DemoError::msg("demo label addresses do not converge"))
}

/// One code segment being assembled, with named labels and a string pool.
struct Seg<'k> {
    a: CodeAssembler,
    known: &'k Symbols,
    labels: Vec<(String, CodeLabel)>,
    strings: Vec<(String, String)>,
    /// Prefix for label names, so the two stages' labels never clash.
    prefix: &'static str,
}

impl<'k> Seg<'k> {
    fn new(bitness: u32, prefix: &'static str, known: &'k Symbols) -> Result<Seg<'k>, DemoError> {
        Ok(Seg {
            a: CodeAssembler::new(bitness)?,
            known,
            labels: Vec::new(),
            strings: Vec::new(),
            prefix,
        })
    }

    /// The label called `name` in this segment, created on first use.
    fn label(&mut self, name: &str) -> CodeLabel {
        let full = format!("{}{name}", self.prefix);
        if let Some((_, l)) = self.labels.iter().find(|(n, _)| *n == full) {
            return *l;
        }
        let l = self.a.create_label();
        self.labels.push((full, l));
        l
    }

    /// Places the label `name` at the next instruction or data.
    fn here(&mut self, name: &str) -> Result<(), DemoError> {
        let mut l = self.label(name);
        self.a.set_label(&mut l)?;
        // set_label updates the label in place; keep our copy identical.
        let full = format!("{}{name}", self.prefix);
        if let Some(e) = self.labels.iter_mut().find(|(n, _)| *n == full) {
            e.1 = l;
        }
        Ok(())
    }

    /// The absolute address of a label (of either stage) from the previous pass;
    /// a large placeholder before the first pass, so encodings do not shrink later.
    fn addr(&self, full_name: &str) -> u32 {
        self.known.get(full_name).map_or(0x7fff, |&a| a as u32)
    }

    /// Emits code that prints `text` (via the segment's `puts`).
    fn print(&mut self, text: &str) -> Result<(), DemoError> {
        let name = format!("str{}", self.strings.len());
        let addr = self.addr(&format!("{}{name}", self.prefix));
        if self.a.bitness() == 16 {
            self.a.mov(si, addr)?;
        } else {
            self.a.mov(esi, addr)?;
        }
        let puts = self.label("puts");
        self.a.call(puts)?;
        self.strings.push((name, text.to_string()));
        Ok(())
    }

    /// Emits the string pool, then assembles at `ip`; returns the bytes and the
    /// addresses of all named labels.
    fn finish(mut self, ip: u64, symbols: &mut Symbols) -> Result<Vec<u8>, DemoError> {
        for (name, text) in std::mem::take(&mut self.strings) {
            self.here(&name)?;
            let mut bytes = text.into_bytes();
            bytes.push(0);
            self.a.db(&bytes)?;
        }
        let result = self
            .a
            .assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        for (name, l) in &self.labels {
            symbols.insert(name.clone(), result.label_ip(l)?);
        }
        Ok(result.inner.code_buffer)
    }
}

/// One assembly pass over the whole image.
fn build(known: &Symbols) -> Result<(Vec<u8>, Symbols), DemoError> {
    let mut symbols = Symbols::new();
    let s16 = stage16(known)?.finish(ENTRY16, &mut symbols)?;
    let base32 = (ENTRY16 + s16.len() as u64).next_multiple_of(16);
    let s32 = stage32(known)?.finish(base32, &mut symbols)?;

    let mut image = vec![0u8; 512];
    image.extend_from_slice(&s16);
    image.resize((base32 - DEMO_LOAD_ADDR) as usize, 0);
    image.extend_from_slice(&s32);
    image.resize(image.len().next_multiple_of(512), 0);
    let sectors = image.len() as u64 / 512 - 1;
    if sectors > MAX_SECTORS {
        return Err(DemoError::msg("demo image too large for its boot sector"));
    }
    symbols.insert("sectors".into(), sectors);
    let mbr = boot_sector(known.get("sectors").copied().unwrap_or(1) as u32)?;
    image[..512].copy_from_slice(&mbr);
    Ok((image, symbols))
}

/// The MBR for booting under a BIOS: reads `sectors` sectors after itself to
/// 0000:7E00 with INT 13h and jumps there. ox86 never runs it.
fn boot_sector(sectors: u32) -> Result<Vec<u8>, DemoError> {
    let mut a = CodeAssembler::new(16)?;
    let mut fail = a.create_label();
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, STACK)?;
    // DL still holds the boot drive the BIOS passed.
    a.mov(ax, 0x0200 | sectors)?; // AH=2: read sectors, AL=count
    a.mov(cx, 0x0002u32)?; // cylinder 0, sector 2
    a.xor(dh, dh)?; // head 0
    a.mov(bx, ENTRY16 as u32)?;
    a.int(0x13)?;
    a.jc(fail)?;
    a.jmp_far(0, ENTRY16 as u32)?;
    a.set_label(&mut fail)?;
    a.hlt()?;
    a.jmp(fail)?;
    let mut code = a.assemble(DEMO_LOAD_ADDR)?;
    if code.len() > 446 {
        return Err(DemoError::msg("boot sector code too long"));
    }
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    Ok(code)
}

/// Emits `putc` (AL to COM1 after polling LSR.THRE) and `puts` (the NUL-terminated
/// string at SI/ESI) for the segment's bitness. Both preserve all registers.
fn serial_routines(s: &mut Seg<'_>) -> Result<(), DemoError> {
    let wide = s.a.bitness() == 32;
    let putc = s.label("putc");
    s.here("putc")?;
    if wide {
        s.a.push(edx)?;
        s.a.push(eax)?;
    } else {
        s.a.push(dx)?;
        s.a.push(ax)?;
    }
    s.a.mov(dx, COM1_LSR)?;
    s.a.anonymous_label()?;
    s.a.in_(al, dx)?;
    s.a.test(al, LSR_THRE)?;
    let wait = s.a.bwd()?;
    s.a.jz(wait)?;
    if wide {
        s.a.pop(eax)?;
    } else {
        s.a.pop(ax)?;
    }
    s.a.mov(dx, COM1)?;
    s.a.out(dx, al)?;
    if wide {
        s.a.pop(edx)?;
    } else {
        s.a.pop(dx)?;
    }
    s.a.ret()?;

    s.here("puts")?;
    if wide {
        s.a.push(esi)?;
        s.a.push(eax)?;
    } else {
        s.a.push(si)?;
        s.a.push(ax)?;
    }
    s.a.anonymous_label()?;
    s.a.lodsb()?;
    s.a.test(al, al)?;
    let done = s.a.fwd()?;
    s.a.jz(done)?;
    s.a.call(putc)?;
    let top = s.a.bwd()?;
    s.a.jmp(top)?;
    s.a.anonymous_label()?;
    if wide {
        s.a.pop(eax)?;
        s.a.pop(esi)?;
    } else {
        s.a.pop(ax)?;
        s.a.pop(si)?;
    }
    s.a.ret()?;
    Ok(())
}

/// The real-mode stage at 0000:7E00.
fn stage16(known: &Symbols) -> Result<Seg<'_>, DemoError> {
    let mut s = Seg::new(16, "s16.", known)?;
    let hex16 = s.label("hex16");
    let putc = s.label("putc");

    s.here("entry")?;
    s.a.cli()?;
    s.a.cld()?;
    s.a.xor(ax, ax)?;
    s.a.mov(ds, ax)?;
    s.a.mov(es, ax)?;
    s.a.mov(ss, ax)?;
    s.a.mov(sp, STACK)?;

    // The UART: 115200 baud (divisor 1), 8N1, FIFOs on, no interrupts.
    for (port, value) in [
        (COM1_IER, 0x00u32),
        (COM1_LCR, 0x80),
        (COM1, 0x01),
        (COM1_IER, 0x00),
        (COM1_LCR, 0x03),
        (COM1_FCR, 0xc7),
        (COM1_MCR, 0x03),
    ] {
        s.a.mov(dx, port)?;
        s.a.mov(al, value)?;
        s.a.out(dx, al)?;
    }

    s.print("\r\nox86 demo guest\r\n")?;
    s.print("real mode: running at CS:IP ")?;
    s.a.mov(ax, cs)?;
    s.a.call(hex16)?;
    s.a.mov(al, b':' as u32)?;
    s.a.call(putc)?;
    let mut here = s.a.create_label();
    s.a.call(here)?;
    s.a.set_label(&mut here)?;
    s.a.pop(ax)?;
    s.a.call(hex16)?;
    s.print("\r\n")?;

    // A 16-bit computation: 1 + 2 + ... + 100 in AX.
    s.print("real mode: 1+2+...+100 = 0x")?;
    s.a.xor(ax, ax)?;
    s.a.mov(cx, 100u32)?;
    s.a.anonymous_label()?;
    s.a.add(ax, cx)?;
    let sum_loop = s.a.bwd()?;
    s.a.loop_(sum_loop)?;
    s.a.call(hex16)?;
    s.print("\r\n")?;

    // Fast A20 through system control port A (bit 0 would reset: keep it clear).
    s.a.in_(al, PORT_A)?;
    s.a.or(al, 0x02)?;
    s.a.and(al, 0xfe)?;
    s.a.out(PORT_A, al)?;
    s.print("real mode: A20 on, loading the GDT, entering protected mode\r\n")?;

    let gdtr = s.addr("s16.gdtr");
    s.a.lgdt(ptr(gdtr))?;
    s.a.mov(eax, cr0)?;
    s.a.or(eax, 1)?;
    s.a.mov(cr0, eax)?;
    let target = s.addr("s32.entry");
    s.a.jmp_far(SEL_CODE32, target)?;

    // hex16: AX as four lowercase hex digits.
    s.here("hex16")?;
    s.a.push(ax)?;
    s.a.push(bx)?;
    s.a.push(cx)?;
    s.a.mov(bx, ax)?;
    s.a.mov(cx, 4u32)?;
    s.here("hex16.loop")?;
    s.a.rol(bx, 4)?;
    s.a.mov(al, bl)?;
    s.a.and(al, 0x0f)?;
    s.a.add(al, b'0' as u32)?;
    s.a.cmp(al, b'9' as u32)?;
    let digit = s.label("hex16.digit");
    s.a.jbe(digit)?;
    s.a.add(al, (b'a' - b'9' - 1) as u32)?;
    s.here("hex16.digit")?;
    s.a.call(putc)?;
    s.a.dec(cx)?;
    let top = s.label("hex16.loop");
    s.a.jnz(top)?;
    s.a.pop(cx)?;
    s.a.pop(bx)?;
    s.a.pop(ax)?;
    s.a.ret()?;

    serial_routines(&mut s)?;

    // The GDT: null, flat 32-bit code (0x08), flat 32-bit data (0x10).
    s.here("gdt")?;
    s.a.dq(&[0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff])?;
    s.here("gdtr")?;
    s.a.dw(&[23])?;
    let gdt = s.addr("s16.gdt");
    s.a.dd(&[gdt])?;
    Ok(s)
}

/// Emits a check of `reg` against `expected`: on mismatch `check_failed` counts it
/// and says so on the serial line.
fn check(s: &mut Seg<'_>, reg: AsmRegister32, expected: u32) -> Result<(), DemoError> {
    s.a.cmp(reg, expected)?;
    let mut ok = s.a.create_label();
    s.a.je(ok)?;
    let failed = s.label("check_failed");
    s.a.call(failed)?;
    s.a.set_label(&mut ok)?;
    // The label needs an instruction of its own: the caller may label the next one.
    s.a.nop()?;
    Ok(())
}

/// The 32-bit protected-mode stage.
fn stage32(known: &Symbols) -> Result<Seg<'_>, DemoError> {
    let mut s = Seg::new(32, "s32.", known)?;
    let putc = s.label("putc");
    let hex32 = s.label("hex32");
    let dec32 = s.label("dec32");
    let (magic, failures) = (MAGIC, FAILURES);

    s.here("entry")?;
    s.a.mov(ax, SEL_DATA32)?;
    for seg in [ds, es, fs, gs, ss] {
        s.a.mov(seg, ax)?;
    }
    s.a.mov(esp, STACK)?;
    s.a.mov(dword_ptr(failures), 0u32)?;
    s.print("protected mode: 32-bit flat code and data segments, CS=0x")?;
    s.a.xor(eax, eax)?;
    s.a.mov(ax, cs)?;
    s.a.call(hex32)?;
    s.print("\r\n")?;

    // Page tables: the directory's entries 0 and 768 both point to one table
    // that maps the first 4 MiB with 4 KiB pages (present, writable).
    s.a.mov(edi, PAGE_DIR)?;
    s.a.xor(eax, eax)?;
    s.a.mov(ecx, 1024u32)?;
    s.a.rep().stosd()?;
    s.a.mov(edi, PAGE_TABLE)?;
    s.a.mov(eax, 0x003u32)?;
    s.a.mov(ecx, 1024u32)?;
    s.here("pt.loop")?;
    s.a.stosd()?;
    s.a.add(eax, 0x1000)?;
    let pt_loop = s.label("pt.loop");
    s.a.dec(ecx)?;
    s.a.jnz(pt_loop)?;
    s.a.mov(dword_ptr(PAGE_DIR), PAGE_TABLE | 3)?;
    s.a.mov(dword_ptr(PAGE_DIR + (ALIAS >> 22) * 4), PAGE_TABLE | 3)?;
    s.a.mov(eax, PAGE_DIR)?;
    s.a.mov(cr3, eax)?;
    s.a.mov(eax, cr0)?;
    s.a.or(eax, 0x8000_0000u32 as i32)?;
    s.a.mov(cr0, eax)?;
    s.print("paging on: 0x00000000-0x003fffff identity-mapped, aliased at 0xc0000000\r\n")?;

    // The alias reads what was written through the identity map...
    s.a.mov(dword_ptr(magic), 0x600d_f00du32)?;
    s.print("paging on: wrote 0x600df00d at 0x")?;
    s.a.mov(eax, magic)?;
    s.a.call(hex32)?;
    s.print(", read 0x")?;
    s.a.mov(eax, dword_ptr(magic + ALIAS))?;
    s.a.call(hex32)?;
    s.print(" at 0x")?;
    s.a.push(eax)?;
    s.a.mov(eax, magic + ALIAS)?;
    s.a.call(hex32)?;
    s.a.pop(eax)?;
    s.print("\r\n")?;
    check(&mut s, eax, 0x600d_f00d)?;
    // ...and the other way round.
    s.a.mov(dword_ptr(magic + ALIAS), 0x0bad_cafeu32)?;
    s.print("paging on: wrote 0x0badcafe through the alias, read 0x")?;
    s.a.mov(eax, dword_ptr(magic))?;
    s.a.call(hex32)?;
    s.print(" through the identity map\r\n")?;
    check(&mut s, eax, 0x0bad_cafe)?;

    // Run code from the alias: jump up, report EIP, jump back down.
    let high = s.addr("s32.high") + ALIAS;
    s.a.mov(eax, high)?;
    s.a.jmp(eax)?;
    s.here("high")?;
    let mut eip = s.a.create_label();
    s.a.call(eip)?;
    s.a.set_label(&mut eip)?;
    s.a.pop(ebx)?;
    s.print("paging on: executing at 0x")?;
    s.a.mov(eax, ebx)?;
    s.a.call(hex32)?;
    s.print("\r\n")?;
    let expected_eip = s.addr("s32.high") + ALIAS + 5;
    check(&mut s, ebx, expected_eip)?;
    let low = s.addr("s32.low");
    s.a.mov(eax, low)?;
    s.a.jmp(eax)?;
    s.here("low")?;

    sieve(&mut s, dec32)?;
    fibonacci(&mut s, dec32)?;
    crc32(&mut s, hex32)?;

    // Report and exit through isa-debug-exit (value 0: all passed, 1: failures).
    s.a.mov(eax, dword_ptr(failures))?;
    s.a.test(eax, eax)?;
    let bad = s.label("bad");
    s.a.jnz(bad)?;
    s.print("all checks passed\r\nexiting: writing 0 to port 0xf4\r\n")?;
    s.a.xor(eax, eax)?;
    let exit = s.label("exit");
    s.a.jmp(exit)?;
    s.here("bad")?;
    s.a.call(dec32)?;
    s.print(" check(s) FAILED\r\nexiting: writing 1 to port 0xf4\r\n")?;
    s.a.mov(eax, 1u32)?;
    s.here("exit")?;
    s.a.out(DEBUG_EXIT_PORT, al)?;
    s.here("halt")?;
    s.a.cli()?;
    s.a.hlt()?;
    let halt = s.label("halt");
    s.a.jmp(halt)?;

    // check_failed: count and report.
    s.here("check_failed")?;
    s.a.inc(dword_ptr(failures))?;
    s.print("  ^ CHECK FAILED\r\n")?;
    s.a.ret()?;

    // hex32: EAX as eight lowercase hex digits.
    s.here("hex32")?;
    s.a.pushad()?;
    s.a.mov(edx, eax)?;
    s.a.mov(ecx, 8u32)?;
    s.here("hex32.loop")?;
    s.a.rol(edx, 4)?;
    s.a.mov(al, dl)?;
    s.a.and(al, 0x0f)?;
    s.a.add(al, b'0' as u32)?;
    s.a.cmp(al, b'9' as u32)?;
    let digit = s.label("hex32.digit");
    s.a.jbe(digit)?;
    s.a.add(al, (b'a' - b'9' - 1) as u32)?;
    s.here("hex32.digit")?;
    s.a.call(putc)?;
    s.a.dec(ecx)?;
    let top = s.label("hex32.loop");
    s.a.jnz(top)?;
    s.a.popad()?;
    s.a.ret()?;

    // dec32: EAX as an unsigned decimal number.
    s.here("dec32")?;
    s.a.pushad()?;
    s.a.mov(ebx, 10u32)?;
    s.a.xor(ecx, ecx)?;
    s.here("dec32.div")?;
    s.a.xor(edx, edx)?;
    s.a.div(ebx)?;
    s.a.push(edx)?;
    s.a.inc(ecx)?;
    s.a.test(eax, eax)?;
    let div = s.label("dec32.div");
    s.a.jnz(div)?;
    s.here("dec32.out")?;
    s.a.pop(eax)?;
    s.a.add(al, b'0' as u32)?;
    s.a.call(putc)?;
    s.a.dec(ecx)?;
    let out = s.label("dec32.out");
    s.a.jnz(out)?;
    s.a.popad()?;
    s.a.ret()?;

    serial_routines(&mut s)?;

    // The CRC-32 input.
    s.here("fox")?;
    s.a.db(FOX.as_bytes())?;
    Ok(s)
}

/// The sieve of Eratosthenes below 1000 in a byte array at [`SIEVE`]: prints the
/// primes below 100, then the count, sum and largest of those below 1000.
fn sieve(s: &mut Seg<'_>, dec32: CodeLabel) -> Result<(), DemoError> {
    const N: u32 = 1000;
    s.a.mov(edi, SIEVE)?;
    s.a.mov(ecx, N)?;
    s.a.mov(al, 1u32)?;
    s.a.rep().stosb()?;
    s.a.mov(byte_ptr(SIEVE), 0u32)?;
    s.a.mov(byte_ptr(SIEVE + 1), 0u32)?;
    s.a.mov(ebx, 2u32)?;
    s.here("sieve.outer")?;
    s.a.mov(eax, ebx)?;
    s.a.imul_2(eax, ebx)?;
    s.a.cmp(eax, N)?;
    let count = s.label("sieve.count");
    s.a.jae(count)?;
    s.a.cmp(byte_ptr(ebx + SIEVE), 0u32)?;
    let next = s.label("sieve.next");
    s.a.je(next)?;
    s.here("sieve.inner")?;
    s.a.mov(byte_ptr(eax + SIEVE), 0u32)?;
    s.a.add(eax, ebx)?;
    s.a.cmp(eax, N)?;
    let inner = s.label("sieve.inner");
    s.a.jb(inner)?;
    s.here("sieve.next")?;
    s.a.inc(ebx)?;
    let outer = s.label("sieve.outer");
    s.a.jmp(outer)?;

    s.here("sieve.count")?;
    s.print("primes below 100:")?;
    s.a.xor(ecx, ecx)?; // count
    s.a.xor(edx, edx)?; // sum
    s.a.xor(edi, edi)?; // largest
    s.a.xor(ebx, ebx)?;
    s.here("sieve.scan")?;
    s.a.cmp(byte_ptr(ebx + SIEVE), 0u32)?;
    let skip = s.label("sieve.skip");
    s.a.je(skip)?;
    s.a.inc(ecx)?;
    s.a.add(edx, ebx)?;
    s.a.mov(edi, ebx)?;
    s.a.cmp(ebx, 100u32)?;
    s.a.jae(skip)?;
    s.a.mov(al, b' ' as u32)?;
    let putc = s.label("putc");
    s.a.call(putc)?;
    s.a.mov(eax, ebx)?;
    s.a.call(dec32)?;
    s.here("sieve.skip")?;
    s.a.inc(ebx)?;
    s.a.cmp(ebx, N)?;
    let scan = s.label("sieve.scan");
    s.a.jb(scan)?;
    s.print("\r\nprimes below 1000: count ")?;
    s.a.mov(eax, ecx)?;
    s.a.call(dec32)?;
    s.print(", sum ")?;
    s.a.mov(eax, edx)?;
    s.a.call(dec32)?;
    s.print(", largest ")?;
    s.a.mov(eax, edi)?;
    s.a.call(dec32)?;
    s.print("\r\n")?;
    check(s, ecx, 168)?;
    check(s, edx, 76127)?;
    check(s, edi, 997)?;
    Ok(())
}

/// Fibonacci: the first 20 numbers, then F(47), the largest that fits in 32 bits.
fn fibonacci(s: &mut Seg<'_>, dec32: CodeLabel) -> Result<(), DemoError> {
    s.print("fibonacci:")?;
    s.a.xor(eax, eax)?; // F(n)
    s.a.mov(ebx, 1u32)?; // F(n+1)
    s.a.mov(ecx, 20u32)?;
    s.here("fib.loop")?;
    s.a.push(eax)?;
    s.a.mov(al, b' ' as u32)?;
    let putc = s.label("putc");
    s.a.call(putc)?;
    s.a.pop(eax)?;
    s.a.call(dec32)?;
    s.a.lea(edx, eax + ebx)?;
    s.a.mov(eax, ebx)?;
    s.a.mov(ebx, edx)?;
    s.a.dec(ecx)?;
    let top = s.label("fib.loop");
    s.a.jnz(top)?;
    s.print("\r\nfibonacci(47) = ")?;
    s.a.xor(eax, eax)?;
    s.a.mov(ebx, 1u32)?;
    s.a.mov(ecx, 47u32)?;
    s.here("fib47.loop")?;
    s.a.lea(edx, eax + ebx)?;
    s.a.mov(eax, ebx)?;
    s.a.mov(ebx, edx)?;
    s.a.dec(ecx)?;
    let top = s.label("fib47.loop");
    s.a.jnz(top)?;
    s.a.call(dec32)?;
    s.print("\r\n")?;
    check(s, eax, 2_971_215_073)?;
    Ok(())
}

/// Bitwise CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of [`FOX`].
fn crc32(s: &mut Seg<'_>, hex32: CodeLabel) -> Result<(), DemoError> {
    let fox = s.addr("s32.fox");
    s.a.mov(esi, fox)?;
    s.a.mov(ecx, FOX.len() as u32)?;
    s.a.mov(eax, 0xffff_ffffu32)?;
    s.here("crc.byte")?;
    s.a.xor(al, byte_ptr(esi))?;
    s.a.mov(edx, 8u32)?;
    s.here("crc.bit")?;
    s.a.shr(eax, 1)?;
    let no_xor = s.label("crc.noxor");
    s.a.jnc(no_xor)?;
    s.a.xor(eax, 0xedb8_8320u32)?;
    s.here("crc.noxor")?;
    s.a.dec(edx)?;
    let bit = s.label("crc.bit");
    s.a.jnz(bit)?;
    s.a.inc(esi)?;
    s.a.dec(ecx)?;
    let byte = s.label("crc.byte");
    s.a.jnz(byte)?;
    s.a.not(eax)?;
    s.print(&format!("crc32(\"{FOX}\") = 0x"))?;
    s.a.call(hex32)?;
    s.print("\r\n")?;
    check(s, eax, FOX_CRC32)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryMode;
    use crate::flat::load_flat;
    use ox86_mmu::{Memory, PhysAddr};

    #[test]
    fn image_layout_and_entry() {
        let (img, addr, entry) = demo_image();
        assert_eq!(addr, 0x7c00);
        assert_eq!(img.len() % 512, 0);
        assert!(img.len() > 1024 && img.len() <= 512 * (1 + MAX_SECTORS as usize));
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        assert_eq!(entry.mode, EntryMode::real(0));
        assert_eq!((entry.eip, entry.esp), (0x7e00, 0x7c00));
        // The boot sector reads exactly the sectors that follow it: `mov ax, 0x02NN`.
        let sectors = (img.len() / 512 - 1) as u8;
        assert!(img[..512].windows(3).any(|w| w == [0xb8, sectors, 0x02]));
        // The real-mode stage starts with `cli; cld`.
        assert_eq!(&img[0x200..0x202], &[0xfa, 0xfc]);
        assert_eq!(demo_image().0, img, "assembly is deterministic");
    }

    #[test]
    fn loads_with_the_flat_loader() {
        let (img, addr, entry) = demo_image();
        let mut mem = Memory::new(4 << 20).unwrap();
        assert_eq!(load_flat(&mut mem, &img, PhysAddr(addr), entry), Ok(entry));
        let mut back = vec![0u8; img.len()];
        mem.read_phys(PhysAddr(addr), &mut back);
        assert_eq!(back, img);
        // The demo's fixed data areas lie beyond the image.
        assert!(addr + (img.len() as u64) <= u64::from(PAGE_DIR));
    }

    /// The constants the demo checks against, computed independently here.
    #[test]
    fn known_answers_are_right() {
        let mut crc = 0xffff_ffffu32;
        for &b in FOX.as_bytes() {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        assert_eq!(!crc, FOX_CRC32);
        let primes: Vec<u32> = (2..1000u32)
            .filter(|&n| (2..n).all(|d| n % d != 0))
            .collect();
        let line = format!(
            "primes below 1000: count {}, sum {}, largest {}\r\n",
            primes.len(),
            primes.iter().sum::<u32>(),
            primes.last().unwrap()
        );
        assert!(DEMO_SERIAL_OUTPUT.contains(&line), "{line}");
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..47 {
            (a, b) = (b, a + b);
        }
        assert!(DEMO_SERIAL_OUTPUT.contains(&format!("fibonacci(47) = {a}\r\n")));
        assert!(DEMO_SERIAL_OUTPUT.contains(&format!("= 0x{FOX_CRC32:08x}\r\n")));
        assert!(DEMO_SERIAL_OUTPUT
            .ends_with("all checks passed\r\nexiting: writing 0 to port 0xf4\r\n"));
    }
}
