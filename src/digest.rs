//! Digests of the machine state: 128-bit hashes (XXH3) of the CPU and FPU, of the
//! devices and of RAM, so that two runs can be compared cheaply (`--stats`,
//! `--hash-every N`). Under `--icount` two runs of the same image and input give the
//! same digests at the same instruction count, with the JIT or without.
//!
//! The CPU part hashes architectural state only: EFLAGS as the guest reads it (not
//! the lazy-flag record, which the engines keep differently), the registers, the
//! segment registers with their descriptor caches, the control, debug and table
//! registers, the MSRs, CPL, the halt and interrupt-shadow states, the instruction
//! count, and the whole x87 state.

use ox86_cpu::state::Segment;
use ox86_cpu::CpuState;
use ox86_mmu::Memory;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Bytes of RAM hashed at a time.
const CHUNK: usize = 1 << 20;

/// Where periodic digests go (`--hash-every`): a digest every `every` instructions.
pub struct PeriodicDigest {
    /// Instructions between digests (at least 1).
    pub every: u64,
    /// Takes each digest.
    pub out: Box<dyn FnMut(&Digest) + Send>,
}

impl std::fmt::Debug for PeriodicDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeriodicDigest")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// The digests of one machine state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// The instruction count the state is at.
    pub icount: u64,
    /// CPU and FPU.
    pub cpu: u128,
    /// Every device (see [`ox86_devices::Platform::state_bytes`]).
    pub devices: u128,
    /// RAM, and the A20 gate.
    pub ram: u128,
}

impl Digest {
    /// The digests of CPU state `s`, device state `devices` and memory `mem`.
    pub fn of(s: &CpuState, devices: &[u8], mem: &Memory) -> Digest {
        Digest {
            icount: s.icount,
            cpu: Digest::of_cpu(s),
            devices: xxh3_128(devices),
            ram: ram_digest(mem),
        }
    }

    /// The digest of CPU and FPU state `s` alone.
    pub fn of_cpu(s: &CpuState) -> u128 {
        xxh3_128(&cpu_bytes(s))
    }

    /// One hash of the whole state.
    pub fn whole(&self) -> u128 {
        let mut b = Vec::with_capacity(56);
        b.extend_from_slice(&self.icount.to_le_bytes());
        for p in [self.cpu, self.devices, self.ram] {
            b.extend_from_slice(&p.to_le_bytes());
        }
        xxh3_128(&b)
    }
}

impl std::fmt::Display for Digest {
    /// `<whole> (cpu <..>, devices <..>, ram <..>) at instruction N`, each part
    /// shortened to 64 bits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |h: u128| (h >> 64) as u64;
        write!(
            f,
            "{:032x} (cpu {:016x}, devices {:016x}, ram {:016x}) at instruction {}",
            self.whole(),
            short(self.cpu),
            short(self.devices),
            short(self.ram),
            self.icount
        )
    }
}

/// The architectural CPU and FPU state as bytes (see the module's comment).
fn cpu_bytes(s: &CpuState) -> Vec<u8> {
    let mut b = Vec::with_capacity(1024);
    let mut q = |v: u64| b.extend_from_slice(&v.to_le_bytes());
    for &r in &s.regs {
        q(r);
    }
    q(s.rip);
    q(s.eflags());
    let seg = |q: &mut dyn FnMut(u64), g: &Segment| {
        q(u64::from(g.selector));
        q(u64::from(g.attr));
        q(g.base);
        q(u64::from(g.limit));
    };
    for g in s.seg.iter().chain([&s.ldtr, &s.tr]) {
        seg(&mut q, g);
    }
    for t in [&s.gdtr, &s.idtr] {
        q(t.base);
        q(u64::from(t.limit));
    }
    for v in [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer] {
        q(v);
    }
    for &d in &s.dr {
        q(d);
    }
    let m = &s.msr;
    for v in [
        m.tsc_offset,
        m.apic_base,
        m.sysenter_cs,
        m.sysenter_esp,
        m.sysenter_eip,
        m.misc_enable,
        m.bios_sign_id,
        m.pat,
        m.mtrr_def_type,
    ] {
        q(v);
    }
    for &p in &m.perf {
        q(p);
    }
    for v in [s.cpl, s.halted, s.irq_shadow, s.dbg_pending] {
        q(u64::from(v));
    }
    q(s.icount);
    let f = &s.fpu;
    for r in &f.regs {
        q(r.signif);
        q(u64::from(r.sign_exp));
    }
    for v in [f.fcw, f.fsw, u16::from(f.tag_valid), f.fop, f.fcs, f.fds] {
        q(u64::from(v));
    }
    for v in [f.fip, f.fdp, u64::from(f.mxcsr), u64::from(f.mxcsr_mask)] {
        q(v);
    }
    b.extend_from_slice(&f.xmm_blob);
    b
}

/// RAM, then the A20 gate.
fn ram_digest(mem: &Memory) -> u128 {
    let mut h = Xxh3::new();
    crate::ram::for_each_chunk(mem, CHUNK, |_, bytes| h.update(bytes));
    h.update(&[u8::from(mem.a20_enabled())]);
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ox86_mmu::PhysAddr;

    #[test]
    fn every_part_changes_its_digest() {
        let mut s = CpuState::default();
        let mut mem = Memory::new(1 << 20).unwrap();
        let a = Digest::of(&s, b"dev", &mem);
        assert_eq!(a, Digest::of(&s, b"dev", &mem));
        s.regs[5] ^= 1;
        let b = Digest::of(&s, b"dev", &mem);
        assert_ne!(a.cpu, b.cpu);
        assert_ne!(a.whole(), b.whole());
        s.regs[5] ^= 1;
        s.fpu.regs[3].signif ^= 1 << 40;
        assert_ne!(a.cpu, Digest::of(&s, b"dev", &mem).cpu);
        s.fpu.regs[3].signif ^= 1 << 40;
        assert_ne!(a.devices, Digest::of(&s, b"deV", &mem).devices);
        mem.write_phys(PhysAddr(0xfffff), &[1]);
        let c = Digest::of(&s, b"dev", &mem);
        assert_ne!(a.ram, c.ram);
        assert_eq!((a.cpu, a.devices), (c.cpu, c.devices));
        s.icount += 1;
        assert_ne!(c.whole(), Digest::of(&s, b"dev", &mem).whole());
    }
}
