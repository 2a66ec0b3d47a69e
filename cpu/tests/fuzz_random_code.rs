//! Random bytes run as a guest: whatever the bytes do (privileged instructions, mode
//! switches, faults, page tables made of noise, port I/O to every device), the host
//! must not panic or hang.
//! Each seed fills RAM with random bytes, starts in real mode (so the IVT is noise
//! too), and runs; a triple fault resets the CPU at a new random state and goes on.

use ox86_cpu::state::{attr, Segment, CS, DS, ES, FS, GS, IF, SS};
use ox86_cpu::{Cpu, CpuExit, RunLimits};
use ox86_devices::{Platform, PlatformConfig};
use ox86_mmu::{IoBus, Memory, NullBus, PhysAddr};
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

/// Runs random code for one seed until `total` instructions have retired, on a bare
/// bus or on the PC platform (PIC, PIT, CMOS, UARTs, exit and reset ports all reachable
/// by random IN/OUT). Faults and resets retire nothing, so a separate bound on them
/// ends seeds stuck in fault loops.
fn run_seed(seed: u64, total: u64, devices: bool) -> (u64, u64) {
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
    let mut platform = Platform::new(
        PlatformConfig::default()
            .with_com1(Box::new(std::io::sink()))
            .with_ram_size(2 << 20),
    )
    .unwrap();
    let mut null = NullBus;
    let mut restarts = 0u64;
    let start = Instant::now();
    while cpu.state.icount < total && cpu.stats.interrupts + restarts <= 4 * total {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "seed {seed:#x}: no progress (hang)"
        );
        let bus: &mut dyn IoBus = if devices { &mut platform } else { &mut null };
        let exit = cpu.run(&mut mem, bus, RunLimits { max_insns: 100_000 });
        let mut restart = exit == CpuExit::Shutdown;
        if devices {
            platform.advance_to(cpu.state.icount);
            let req = platform.take_requests();
            if let Some(a20) = req.a20 {
                mem.set_a20(a20);
                cpu.flush_tlb();
            }
            restart |= req.exit_status.is_some() || req.reset.is_some();
        }
        if exit == CpuExit::Halted {
            match platform.next_event_ns() {
                Some(t) if devices && cpu.state.flags & IF != 0 && t > cpu.state.icount => {
                    cpu.state.icount = t;
                    platform.advance_to(t);
                }
                // Nothing can wake it: start over elsewhere.
                _ => restart = true,
            }
        }
        if restart {
            restarts += 1;
            randomize(&mut cpu, &mut rng);
        }
    }
    (cpu.state.icount, cpu.stats.interrupts)
}

#[test]
fn random_code_never_breaks_the_host() {
    // 24 seeds of up to 5M retired instructions: at least 100M in release builds (a
    // tenth in debug builds); seeds stuck in fault loops stop early.
    let per_seed: u64 = if cfg!(debug_assertions) {
        500_000
    } else {
        5_000_000
    };
    let mut insns = 0;
    let mut events = 0;
    for seed in 0..24u64 {
        let (i, e) = run_seed(
            0x9e37_79b9_7f4a_7c15u64.wrapping_mul(seed + 1),
            per_seed,
            seed % 2 == 1,
        );
        eprintln!("seed {seed}: {i} instructions, {e} events");
        insns += i;
        events += e;
    }
    eprintln!("random code: {insns} instructions retired, {events} exceptions/interrupts");
    // Random code must both execute and fault: a run that did neither tested nothing.
    assert!(
        insns > 0 && events > 0,
        "insns {insns}, exceptions {events}"
    );
}
