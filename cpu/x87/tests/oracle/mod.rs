//! Host-x87 oracle: runs one instruction natively (frstor; insn; fnsave) and
//! through `X87State::execute`, and compares the results.

#![allow(dead_code)]

use iced_x86::{Decoder, DecoderOptions, Instruction};
use ox86_x87::{X87Context, X87State};

/// xorshift64* PRNG with a fixed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bool(&mut self) -> bool {
        self.next() & 1 != 0
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

pub fn f80(sign: bool, exp: u16, sig: u64) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&sig.to_le_bytes());
    b[8..].copy_from_slice(&(((sign as u16) << 15) | (exp & 0x7FFF)).to_le_bytes());
    b
}

fn rand_sig(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => (rng.next() | (1 << 63)) & !((1 << rng.below(64)) - 1) | (1 << 63),
        1 => (1 << 63) | (rng.next() >> rng.below(64)) << rng.below(40),
        _ => rng.next() | (1 << 63),
    }
}

/// A random 80-bit value, specials included.
pub fn gen_f80(rng: &mut Rng) -> [u8; 10] {
    let s = rng.bool();
    match rng.below(100) {
        0..=34 => f80(s, (0x3FFF + rng.range(-70, 70)) as u16, rand_sig(rng)),
        35..=49 => f80(s, rng.range(1, 0x7FFE) as u16, rand_sig(rng)),
        50..=52 => f80(s, (0x7FFE - rng.below(3)) as u16, rand_sig(rng)),
        53..=56 => f80(s, (1 + rng.below(3)) as u16, rand_sig(rng)),
        57..=60 => f80(s, 0, 0),
        61..=64 => f80(s, 0, rng.next() >> (1 + rng.below(63))),
        65 => f80(s, 0, rng.next() | (1 << 63)),
        66..=68 => f80(s, 0x7FFF, 1 << 63),
        69..=71 => {
            if rng.below(3) == 0 {
                f80(true, 0x7FFF, 0xC000_0000_0000_0000)
            } else {
                f80(s, 0x7FFF, rng.next() | (3 << 62))
            }
        }
        72..=74 => f80(
            s,
            0x7FFF,
            ((rng.next() | 1) >> rng.below(3)) & !(1 << 62) | (1 << 63),
        ),
        75..=76 => f80(s, rng.range(1, 0x7FFE) as u16, rng.next() >> 1),
        77 => f80(s, 0x7FFF, rng.next() >> 1),
        78..=87 => {
            let v = [1.0f64, 2.0, 0.5, 3.0, 10.0, 0.25, 1.5, 100.0, 7.0, 1024.0]
                [rng.below(10) as usize];
            let b = v.to_bits();
            let e = ((b >> 52) & 0x7FF) as i32 - 1023;
            f80(
                s,
                (e + 16383) as u16,
                (1 << 63) | ((b & ((1 << 52) - 1)) << 11),
            )
        }
        _ => f80(s, (0x3FFF + rng.range(-4, 2)) as u16, rand_sig(rng)),
    }
}

/// A random m32fp image.
pub fn gen_f32(rng: &mut Rng) -> u32 {
    let s = (rng.bool() as u32) << 31;
    s | match rng.below(20) {
        0 => 0,
        1 => (rng.next() as u32) & 0x7F_FFFF,
        2 => 0x7F80_0000,
        3 => 0x7FC0_0000 | (rng.next() as u32 & 0x3F_FFFF),
        4 => 0x7F80_0001 | (rng.next() as u32 & 0x3F_FFFF),
        5 => (((127 + rng.range(-3, 3)) as u32) << 23) | (rng.next() as u32 & 0x7F_0000),
        6..=12 => (((127 + rng.range(-30, 30)) as u32) << 23) | (rng.next() as u32 & 0x7F_FFFF),
        _ => (rng.range(1, 254) as u32) << 23 | (rng.next() as u32 & 0x7F_FFFF),
    }
}

/// A random m64fp image.
pub fn gen_f64(rng: &mut Rng) -> u64 {
    let s = (rng.bool() as u64) << 63;
    let m = (1u64 << 52) - 1;
    s | match rng.below(20) {
        0 => 0,
        1 => rng.next() & m,
        2 => 0x7FF0_0000_0000_0000,
        3 => 0x7FF8_0000_0000_0000 | (rng.next() & (m >> 1)),
        4 => 0x7FF0_0000_0000_0001 | (rng.next() & (m >> 1)),
        5 => ((1023 + rng.range(-3, 3)) as u64) << 52 | (rng.next() & m & !0xFFFF_FFFF),
        6..=12 => ((1023 + rng.range(-70, 70)) as u64) << 52 | (rng.next() & m),
        _ => (rng.range(1, 2046) as u64) << 52 | (rng.next() & m),
    }
}

/// A random integer of `bytes` width (little endian into a 10-byte buffer).
pub fn gen_int(rng: &mut Rng, bytes: usize) -> [u8; 10] {
    let v: u64 = match rng.below(6) {
        0 => rng.below(5),
        1 => (rng.next() >> rng.below(64)).wrapping_neg(),
        2 => 1u64 << (8 * bytes - 1),
        _ => rng.next() >> rng.below(64),
    };
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&v.to_le_bytes());
    b
}

/// FRSTOR image (108 bytes, 32-bit protected-mode layout).
#[derive(Clone, Copy)]
pub struct Image(pub [u8; 108]);

impl Image {
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.0[0], self.0[1]])
    }
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes([self.0[4], self.0[5]])
    }
    pub fn ftw(&self) -> u16 {
        u16::from_le_bytes([self.0[8], self.0[9]])
    }
    pub fn st(&self, i: usize) -> [u8; 10] {
        let mut r = [0u8; 10];
        r.copy_from_slice(&self.0[28 + 10 * i..38 + 10 * i]);
        r
    }
    pub fn set_st(&mut self, i: usize, v: [u8; 10]) {
        self.0[28 + 10 * i..38 + 10 * i].copy_from_slice(&v);
    }
}

/// How to shape the random initial state.
#[derive(Clone, Copy, Default)]
pub struct StateGen {
    /// Probability (percent) of all exceptions unmasked-random instead of all masked.
    pub unmask_pct: u64,
    /// Keep ST7 empty most of the time (for pushes).
    pub room_to_push: bool,
}

pub fn gen_state(rng: &mut Rng, g: StateGen) -> Image {
    let mut img = [0u8; 108];
    let masks = if rng.below(100) < g.unmask_pct {
        rng.next() as u16 & 0x3F
    } else {
        0x3F
    };
    let pc = [0u16, 1, 2, 3, 3, 3][rng.below(6) as usize];
    let rc = rng.below(4) as u16;
    let fcw = 0x40 | masks | (pc << 8) | (rc << 10);
    let top = rng.below(8) as u16;
    let flags = (rng.next() as u16) & masks & 0x3F;
    let cc = (rng.next() as u16) & 0x4700;
    let fsw = flags | cc | (top << 11);
    // Tags: usually a contiguous stack ST0..ST(k-1) valid.
    let mut valid = [false; 8];
    if rng.below(10) < 8 {
        let k = if g.room_to_push && rng.below(10) < 9 {
            rng.below(7) + 1
        } else {
            rng.below(9)
        };
        for (i, v) in valid.iter_mut().enumerate().take(k as usize) {
            let _ = i;
            *v = true;
        }
        if rng.below(10) == 0 {
            valid[0] = false;
        }
    } else {
        for v in valid.iter_mut() {
            *v = rng.below(4) != 0;
        }
    }
    let mut ftw: u16 = 0;
    for (i, &v) in valid.iter().enumerate() {
        // Physical register of ST(i) is (top + i) & 7.
        let p = (top as usize + i) & 7;
        if !v {
            ftw |= 3 << (2 * p);
        }
    }
    img[0..2].copy_from_slice(&fcw.to_le_bytes());
    img[4..6].copy_from_slice(&fsw.to_le_bytes());
    img[8..10].copy_from_slice(&ftw.to_le_bytes());
    let mut im = Image(img);
    for i in 0..8 {
        im.set_st(i, gen_f80(rng));
    }
    im
}

/// Memory operand buffer, 16-byte aligned.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct MemBuf(pub [u8; 512]);

/// Native executor: a page holding `frstor [rdi]; push [rdx]; popfq; INSN;
/// pushfq; pop [rdx]; mov [rdx+8], ax; fnsave [rdi]; ret`.
#[cfg(all(target_arch = "x86_64", unix))]
pub struct Native {
    page: *mut u8,
    len: usize,
}

#[cfg(all(target_arch = "x86_64", unix))]
impl Native {
    pub fn new(insn: &[u8]) -> Native {
        let mut code = vec![0xDD, 0x27, 0xFF, 0x32, 0x9D];
        code.extend_from_slice(insn);
        code.extend_from_slice(&[0x9C, 0x8F, 0x02, 0x66, 0x89, 0x42, 0x08, 0xDD, 0x37, 0xC3]);
        let len = 4096;
        // SAFETY: anonymous private mapping of one page; checked for failure below.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        let page = page as *mut u8;
        // SAFETY: the page is writable and `code` is far shorter than a page.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), page, code.len());
            assert_eq!(
                libc::mprotect(
                    page as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_EXEC
                ),
                0
            );
        }
        Native { page, len }
    }

    /// Runs the stub: `img` in (FRSTOR) and out (FNSAVE); `mem` is the operand;
    /// `aux[0]` EFLAGS in/out, `aux[1]` AX out.
    pub fn run(&self, img: &mut Image, mem: &mut MemBuf, aux: &mut [u64; 2]) {
        let f = self.page;
        // SAFETY: the page holds the stub above, which only touches the three
        // buffers passed in rdi/rsi/rdx (all live and large enough: 108 and 512
        // bytes, 16 bytes of aux), keeps the stack balanced, restores the FPU to
        // its FNINIT state (FNSAVE) and only sets arithmetic EFLAGS bits. The
        // instruction under test is an x87 instruction addressing [rsi].
        unsafe {
            std::arch::asm!(
                "call {f}",
                f = in(reg) f,
                in("rdi") img.0.as_mut_ptr(),
                in("rsi") mem.0.as_mut_ptr(),
                in("rdx") aux.as_mut_ptr(),
                clobber_abi("C"),
            );
        }
    }
}

#[cfg(all(target_arch = "x86_64", unix))]
impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`.
        unsafe {
            libc::munmap(self.page as *mut libc::c_void, self.len);
        }
    }
}

/// Test context for the emulator: a byte buffer as the memory operand.
pub struct Ctx {
    pub mem: MemBuf,
    pub eflags: u32,
    pub ax: Option<u16>,
}

impl X87Context for Ctx {
    type Fault = ();
    fn read_mem(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
        let o = offset as usize;
        buf.copy_from_slice(self.mem.0.get(o..o + buf.len()).ok_or(())?);
        Ok(())
    }
    fn write_mem(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
        let o = offset as usize;
        self.mem
            .0
            .get_mut(o..o + data.len())
            .ok_or(())?
            .copy_from_slice(data);
        Ok(())
    }
    fn eflags(&self) -> u32 {
        self.eflags
    }
    fn set_compare_flags(&mut self, zf: bool, pf: bool, cf: bool) {
        self.eflags &= !0x8D5;
        self.eflags |= (zf as u32) << 6 | (pf as u32) << 2 | cf as u32;
    }
    fn set_ax(&mut self, value: u16) {
        self.ax = Some(value);
    }
    fn real_mode(&self) -> bool {
        false
    }
    fn operand_size_16(&self) -> bool {
        false
    }
    fn instruction_pointer(&self) -> (u32, u16) {
        (0, 0)
    }
    fn data_pointer(&self) -> (u32, u16) {
        (0, 0)
    }
}

pub fn decode32(bytes: &[u8]) -> Instruction {
    let mut d = Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE);
    d.decode()
}

/// Runs the emulator: FRSTOR `img`, the instruction, FNSAVE back into `img`.
pub fn emulate(insn: &Instruction, img: &mut Image, mem: &mut MemBuf, aux: &mut [u64; 2]) {
    let mut s = X87State::default();
    let frstor = decode32(&[0xDD, 0x26]);
    let fnsave = decode32(&[0xDD, 0x36]);
    let mut c = Ctx {
        mem: MemBuf([0; 512]),
        eflags: aux[0] as u32,
        ax: None,
    };
    c.mem.0[..108].copy_from_slice(&img.0);
    s.execute(&frstor, &mut c).expect("frstor");
    c.mem = *mem;
    s.execute(insn, &mut c).expect("execute");
    *mem = c.mem;
    aux[0] = u64::from(c.eflags);
    if let Some(ax) = c.ax {
        aux[1] = (aux[1] & !0xFFFF) | u64::from(ax);
    }
    let mut c2 = Ctx {
        mem: MemBuf([0; 512]),
        eflags: 0,
        ax: None,
    };
    s.execute(&fnsave, &mut c2).expect("fnsave");
    img.0.copy_from_slice(&c2.mem.0[..108]);
}

/// What a test case compares.
#[derive(Clone, Copy)]
pub struct Check {
    /// FSW bits that the SDM leaves undefined for this instruction.
    pub undefined_fsw: u16,
    /// Allowed difference of register results in ulps (transcendentals).
    pub ulps: u64,
    /// Bytes of the memory buffer that are compared.
    pub mem_len: usize,
    /// Compare AX (FNSTSW AX).
    pub ax: bool,
}

/// Distance in ulps between two 80-bit values of the same sign/class, or None.
pub fn ulp_diff(a: [u8; 10], b: [u8; 10]) -> Option<u64> {
    let key = |v: [u8; 10]| -> Option<(bool, i128)> {
        let sig = u64::from_le_bytes(v[..8].try_into().ok()?);
        let se = u16::from_le_bytes([v[8], v[9]]);
        let e = i128::from(se & 0x7FFF);
        if e == 0x7FFF {
            return None;
        }
        Some((
            se >> 15 != 0,
            (e << 63)
                + i128::from(sig & !(1 << 63))
                + if sig >> 63 != 0 && e == 0 { 1 << 63 } else { 0 },
        ))
    };
    let (sa, ka) = key(a)?;
    let (sb, kb) = key(b)?;
    let ka = if sa { -ka } else { ka };
    let kb = if sb { -kb } else { kb };
    u64::try_from((ka - kb).abs()).ok()
}

/// Result of a comparison.
pub struct Stats {
    pub cases: u64,
    pub ulp_off: u64,
    pub failures: Vec<String>,
}

pub fn fmt_img(img: &Image) -> String {
    let mut s = format!(
        "fcw={:04x} fsw={:04x} ftw={:04x}",
        img.fcw(),
        img.fsw(),
        img.ftw()
    );
    for i in 0..8 {
        let v = img.st(i);
        let sig = u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]));
        let se = u16::from_le_bytes([v[8], v[9]]);
        s += &format!(" st{i}={se:04x}:{sig:016x}");
    }
    s
}

/// Compares native and emulated results of one case; returns a description on mismatch.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    name: &str,
    chk: Check,
    init: &Image,
    mem_in: &MemBuf,
    eflags_in: u64,
    (ni, nm, na): (&Image, &MemBuf, &[u64; 2]),
    (ei, em, ea): (&Image, &MemBuf, &[u64; 2]),
    stats: &mut Stats,
) {
    let mut diffs = Vec::new();
    let mut undefined = chk.undefined_fsw;
    let mut ulp_ok = false;
    if chk.ulps > 0 {
        for i in 0..8 {
            if ni.st(i) != ei.st(i) {
                match ulp_diff(ni.st(i), ei.st(i)) {
                    Some(d) if d <= chk.ulps => ulp_ok = true,
                    _ => diffs.push(format!("st{i}")),
                }
            }
        }
        if ulp_ok {
            // C1 (round-up) and PE/UE legitimately differ with the last bit.
            undefined |= 0x0200 | 0x20 | 0x10;
            stats.ulp_off += 1;
        }
    } else {
        for i in 0..8 {
            if ni.st(i) != ei.st(i) {
                diffs.push(format!("st{i}"));
            }
        }
    }
    if ni.fcw() != ei.fcw() {
        diffs.push("fcw".into());
    }
    if (ni.fsw() ^ ei.fsw()) & !undefined != 0 {
        diffs.push(format!("fsw({:04x})", (ni.fsw() ^ ei.fsw()) & !undefined));
    }
    if ni.ftw() != ei.ftw() {
        diffs.push("ftw".into());
    }
    if nm.0[..chk.mem_len] != em.0[..chk.mem_len] {
        diffs.push("mem".into());
    }
    if (na[0] ^ ea[0]) & 0x8D5 != 0 {
        diffs.push("eflags".into());
    }
    if chk.ax && na[1] & 0xFFFF != ea[1] & 0xFFFF {
        diffs.push("ax".into());
    }
    stats.cases += 1;
    if !diffs.is_empty() && stats.failures.len() < 12 {
        let mut memhex = String::new();
        for b in &mem_in.0[..chk.mem_len.min(16)] {
            memhex += &format!("{b:02x}");
        }
        let mut nmem = String::new();
        let mut emem = String::new();
        for b in &nm.0[..chk.mem_len.min(16)] {
            nmem += &format!("{b:02x}");
        }
        for b in &em.0[..chk.mem_len.min(16)] {
            emem += &format!("{b:02x}");
        }
        stats.failures.push(format!(
            "{name}: differs in {diffs:?}\n  init   {}\n  mem={memhex} eflags={eflags_in:x}\n  native {} mem={nmem} fl={:x} ax={:x}\n  emul   {} mem={emem} fl={:x} ax={:x}",
            fmt_img(init),
            fmt_img(ni),
            na[0],
            na[1] & 0xFFFF,
            fmt_img(ei),
            ea[0],
            ea[1] & 0xFFFF
        ));
    }
}
