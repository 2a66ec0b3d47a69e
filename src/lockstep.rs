//! Lockstep mode: a run with the JIT and a run of the interpreter alone, from the same
//! image with time derived from the instruction count, compared after every slice:
//! every register, flag and segment, the x87 state, the instruction count, and
//! (every few slices and at the end) all of guest RAM.

use ox86_cpu::CpuState;
use ox86_mmu::PhysAddr;

use crate::machine::Machine;

/// Bytes of RAM compared at a time.
const CHUNK: usize = 1 << 20;

/// Compares the JIT machine `a` with the interpreter machine `b`; with `memory`, all
/// of RAM too. Returns a description of the first difference.
pub fn compare(a: &Machine, b: &Machine, memory: bool) -> Result<(), String> {
    let (x, y) = (&a.cpu.stats, &b.cpu.stats);
    if x.interrupts != y.interrupts {
        return Err(format!(
            "exceptions and interrupts delivered differ at instruction {}: JIT {} (last vector {}), interpreter {} (last vector {})",
            a.cpu.state.icount, x.interrupts, x.last_vector, y.interrupts, y.last_vector
        ));
    }
    compare_cpu(&a.cpu.state, &b.cpu.state)?;
    if memory {
        compare_memory(a, b)?;
    }
    Ok(())
}

fn compare_cpu(a: &CpuState, b: &CpuState) -> Result<(), String> {
    let at = format!(
        "at instruction {} (JIT) / {} (interpreter)",
        a.icount, b.icount
    );
    let diff = |what: &str, x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| {
        Err(format!(
            "{what} differs {at}: JIT {x:x?}, interpreter {y:x?}"
        ))
    };
    if a.icount != b.icount {
        return diff("the instruction count", &a.icount, &b.icount);
    }
    if a.rip != b.rip {
        return diff("EIP", &a.rip, &b.rip);
    }
    for k in 0..8 {
        if a.regs[k] != b.regs[k] {
            return diff(&format!("register {k}"), &a.regs[k], &b.regs[k]);
        }
    }
    if a.eflags() != b.eflags() {
        return diff("EFLAGS", &a.eflags(), &b.eflags());
    }
    for k in 0..6 {
        let (x, y) = (&a.seg[k], &b.seg[k]);
        if (x.selector, x.base, x.limit, x.attr) != (y.selector, y.base, y.limit, y.attr) {
            return diff(&format!("segment {k}"), x, y);
        }
    }
    let ctl = |s: &CpuState| (s.cr0, s.cr2, s.cr3, s.cr4, s.cpl, s.halted, s.efer);
    if ctl(a) != ctl(b) {
        return diff("CR0/CR2/CR3/CR4/CPL/halted/EFER", &ctl(a), &ctl(b));
    }
    if a.fpu != b.fpu {
        return diff("the x87 state", &a.fpu, &b.fpu);
    }
    Ok(())
}

fn compare_memory(a: &Machine, b: &Machine) -> Result<(), String> {
    let size = a.mem.ram_size();
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut at = 0u64;
    while at < size {
        let n = CHUNK.min((size - at) as usize);
        a.mem.read_phys(PhysAddr(at), &mut x[..n]);
        b.mem.read_phys(PhysAddr(at), &mut y[..n]);
        if x[..n] != y[..n] {
            let k = (0..n).find(|&k| x[k] != y[k]).unwrap_or(0);
            return Err(format!(
                "guest RAM differs at {:#x} at instruction {}: JIT {:#04x}, interpreter {:#04x}",
                at + k as u64,
                a.cpu.state.icount,
                x[k],
                y[k]
            ));
        }
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MachineBuilder, SerialOut};

    fn demo() -> Machine {
        MachineBuilder::new()
            .demo()
            .serial(SerialOut::None)
            .icount(0)
            .max_insns(20_000)
            .build()
            .expect("demo machine")
    }

    #[test]
    fn finds_register_flag_and_memory_differences() {
        let (mut a, mut b) = (demo(), demo());
        a.run().unwrap();
        b.run().unwrap();
        compare(&a, &b, true).expect("identical runs compare equal");
        b.cpu.state.regs[3] ^= 1;
        assert!(compare(&a, &b, false).unwrap_err().contains("register 3"));
        b.cpu.state.regs[3] ^= 1;
        b.cpu.state.flags ^= ox86_cpu::state::DF;
        assert!(compare(&a, &b, false).unwrap_err().contains("EFLAGS"));
        b.cpu.state.flags ^= ox86_cpu::state::DF;
        let mut byte = [0u8];
        b.mem.read_phys(PhysAddr(0x12345), &mut byte);
        b.mem.write_phys(PhysAddr(0x12345), &[byte[0] ^ 0x80]);
        compare(&a, &b, false).expect("memory is compared only when asked");
        assert!(compare(&a, &b, true).unwrap_err().contains("0x12345"));
    }
}
