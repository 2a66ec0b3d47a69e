//! Random bytes run as a guest: whatever the bytes do (privileged instructions, mode
//! switches, faults, page tables made of noise), the host must not panic or hang.
//! Each seed fills RAM with random bytes, starts in real mode (so the IVT is noise
//! too), and runs; a triple fault resets the CPU at a new random state and goes on.

use ox86_cpu::state::{attr, Segment, CS, DS, ES, FS, GS, SS};
use ox86_cpu::{Cpu, CpuExit, RunLimits};
use ox86_mmu::{Memory, NullBus, PhysAddr};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn randomize(cpu: &mut Cpu, rng: &mut Rng) {
    cpu.reset();
    let s = &mut cpu.state;
    for r in s.regs.iter_mut().take(8) {
        *r = rng.next() & 0xffff_ffff;
    }
    let cs = (rng.next() & 0xffff) as u16;
    for (seg, sel) in [
        (CS, cs),
        (DS, rng.next() as u16),
        (ES, rng.next() as u16),
        (SS, rng.next() as u16),
        (FS, 0),
        (GS, 0),
    ] {
        s.seg[seg] = Segment::real(sel);
    }
    s.seg[CS].attr |= attr::CODE;
    s.seg[CS].update_rights();
    s.rip = rng.next() & 0xffff;
}

/// Runs `total` instructions' worth of random code for one seed. Work is counted as
/// retired instructions plus delivered events, so endless fault loops end too.
fn run_seed(seed: u64, total: u64) -> (u64, u64, u64) {
    let mut rng = Rng(seed | 1);
    let mut mem = Memory::new(2 << 20).unwrap();
    let mut page = vec![0u8; 4096];
    for a in (0..(2u64 << 20)).step_by(4096) {
        for b in page.iter_mut() {
            *b = rng.next() as u8;
        }
        mem.write_phys(PhysAddr(a), &page);
    }
    let mut cpu = Cpu::new();
    randomize(&mut cpu, &mut rng);
    let mut bus = NullBus;
    let mut resets = 0u64;
    let mut halts = 0u64;
    let start = Instant::now();
    loop {
        let work = cpu.state.icount + cpu.stats.interrupts + resets * 1000 + halts * 1000;
        if work >= total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "seed {seed:#x}: no progress (hang)"
        );
        match cpu.run(&mut mem, &mut bus, RunLimits { max_insns: 100_000 }) {
            CpuExit::Shutdown => {
                resets += 1;
                randomize(&mut cpu, &mut rng);
            }
            CpuExit::Halted => {
                // Nothing can wake it (no interrupt sources): start over elsewhere.
                halts += 1;
                randomize(&mut cpu, &mut rng);
            }
            CpuExit::Budget | CpuExit::Stop => {}
        }
    }
    (cpu.state.icount, resets, cpu.stats.interrupts)
}

#[test]
fn random_code_never_breaks_the_host() {
    // 20 seeds x 5M = 100M units of work in release builds; a tenth in debug builds.
    let per_seed: u64 = if cfg!(debug_assertions) {
        500_000
    } else {
        5_000_000
    };
    let mut insns = 0;
    let mut events = 0;
    for seed in 0..20u64 {
        let (i, _r, e) = run_seed(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(seed + 1), per_seed);
        insns += i;
        events += e;
    }
    // Random code must both execute and fault: a run that did neither tested nothing.
    assert!(
        insns > 0 && events > 0,
        "insns {insns}, exceptions {events}"
    );
}
