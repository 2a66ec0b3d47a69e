//! The machine: CPU, memory, devices and firmware, and the run loop that drives them
//! on a virtual clock.

use std::io::Write;
use std::time::Duration;

use ox86_bios::{EntryMode, EntryState};
use ox86_cpu::state::{
    attr, Segment, CR0_PE, CS, DS, ES, FS, GS, IF, RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP, SS,
};
use ox86_cpu::{Cpu, CpuExit, RunLimits};
use ox86_devices::{Platform, PlatformConfig};
use ox86_mmu::{Memory, PhysAddr};

use crate::error::MachineError;

/// Where the guest's COM1 output goes.
pub enum SerialOut {
    /// The host's standard output.
    Stdout,
    /// Discarded.
    None,
    /// Any writer (a file, a buffer shared with a test).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerialOut::Stdout => "Stdout",
            SerialOut::None => "None",
            SerialOut::Writer(_) => "Writer",
        })
    }
}

/// The guest to boot.
#[derive(Debug, Clone)]
pub enum Guest {
    /// A kernel image (format detected) with its command line and initrd/module.
    Kernel {
        /// The image bytes.
        image: Vec<u8>,
        /// The command line.
        cmdline: String,
        /// An initrd (Linux) or Multiboot module.
        initrd: Option<Vec<u8>>,
    },
    /// The built-in demo guest.
    Demo,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote to the isa-debug-exit port: status `(value << 1) | 1`.
    GuestExit(u32),
    /// The guest reset the machine and `no_reboot` was set.
    Reset,
    /// The guest halted with interrupts disabled: nothing can wake it.
    Halted,
    /// The instruction limit was reached.
    InstructionLimit,
}

/// Counters for `--stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineStats {
    /// Guest instructions retired.
    pub instructions: u64,
    /// Decoded blocks created.
    pub blocks_decoded: u64,
    /// TLB misses.
    pub tlb_misses: u64,
    /// Whole-TLB flushes.
    pub tlb_flushes: u64,
    /// Decoded blocks invalidated by code writes.
    pub invalidations: u64,
    /// Exceptions and interrupts delivered.
    pub interrupts: u64,
}

/// How many instructions the CPU runs between device/timer checks.
const SLICE: u64 = 200_000;

/// A whole PC.
pub struct Machine {
    pub(crate) cpu: Cpu,
    pub(crate) mem: Memory,
    pub(crate) platform: Platform,
    pub(crate) guest: Guest,
    pub(crate) no_reboot: bool,
    pub(crate) max_insns: Option<u64>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("cpu", &self.cpu)
            .field("mem", &self.mem)
            .finish()
    }
}

impl Machine {
    /// Creates the machine and loads the guest.
    pub(crate) fn new(
        ram: u64,
        serial: SerialOut,
        guest: Guest,
        no_reboot: bool,
        max_insns: Option<u64>,
    ) -> Result<Machine, MachineError> {
        let mem = Memory::new(ram)?;
        let out: Box<dyn Write + Send> = match serial {
            SerialOut::Stdout => Box::new(std::io::stdout()),
            SerialOut::None => Box::new(std::io::sink()),
            SerialOut::Writer(w) => w,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let config = PlatformConfig::default()
            .with_com1(out)
            .with_ram_size(ram)
            .with_rtc_start(now);
        let platform = Platform::new(config).map_err(|e| MachineError::Devices(e.to_string()))?;
        let mut m = Machine {
            cpu: Cpu::new(),
            mem,
            platform,
            guest,
            no_reboot,
            max_insns,
        };
        m.load_guest()?;
        Ok(m)
    }

    fn load_guest(&mut self) -> Result<(), MachineError> {
        let entry = match &self.guest {
            Guest::Kernel {
                image,
                cmdline,
                initrd,
            } => {
                let modules: Vec<ox86_bios::Module<'_>> = initrd
                    .iter()
                    .map(|d| ox86_bios::Module {
                        data: d,
                        cmdline: "initrd",
                    })
                    .collect();
                ox86_bios::load_kernel(&mut self.mem, image, cmdline, &modules)?
            }
            Guest::Demo => {
                let (image, addr, entry) = ox86_bios::demo_image();
                ox86_bios::load_flat(&mut self.mem, &image, PhysAddr(addr), entry)?
            }
        };
        self.cpu.reset();
        apply_entry(&mut self.cpu, &entry);
        Ok(())
    }

    /// Statistics so far.
    pub fn stats(&self) -> MachineStats {
        MachineStats {
            instructions: self.cpu.state.icount,
            blocks_decoded: self.cpu.blocks.decoded,
            tlb_misses: self.cpu.tlb.misses,
            tlb_flushes: self.cpu.tlb.flushes,
            invalidations: self.cpu.blocks.invalidated,
            interrupts: self.cpu.stats.interrupts,
        }
    }

    /// The CPU (for inspection).
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    /// Guest memory (for inspection).
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// Runs the guest until it exits, resets (with `no_reboot`), halts for good, or
    /// reaches the instruction limit.
    pub fn run(&mut self) -> Result<ExitReason, MachineError> {
        loop {
            let mut budget = SLICE;
            if let Some(max) = self.max_insns {
                let left = max.saturating_sub(self.cpu.state.icount);
                if left == 0 {
                    return Ok(ExitReason::InstructionLimit);
                }
                budget = budget.min(left);
            }
            let exit = self.cpu.run(
                &mut self.mem,
                &mut self.platform,
                RunLimits { max_insns: budget },
            );
            // Virtual time follows the instruction count (1 instruction = 1 ns).
            self.platform.advance_to(self.cpu.state.icount);
            let req = self.platform.take_requests();
            if let Some(a20) = req.a20 {
                self.mem.set_a20(a20);
                self.cpu.flush_tlb();
            }
            if let Some(status) = req.exit_status {
                let _ = std::io::stdout().flush();
                return Ok(ExitReason::GuestExit(status));
            }
            let reset = req.reset.is_some() || exit == CpuExit::Shutdown;
            if reset {
                if self.no_reboot {
                    return Ok(ExitReason::Reset);
                }
                tracing::info!(target: "ox86::machine", "guest reset: reloading the guest");
                self.load_guest()?;
                continue;
            }
            if exit == CpuExit::Halted {
                if self.cpu.state.flags & IF == 0 {
                    return Ok(ExitReason::Halted);
                }
                // Idle: jump virtual time to the next device event, or wait for input.
                match self.platform.next_event_ns() {
                    Some(t) if t > self.cpu.state.icount => {
                        self.cpu.state.icount = t;
                        self.platform.advance_to(t);
                    }
                    Some(_) => {}
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

/// Sets the CPU state a loader asked for.
fn apply_entry(cpu: &mut Cpu, e: &EntryState) {
    let s = &mut cpu.state;
    for (r, v) in [
        (RAX, e.eax),
        (RBX, e.ebx),
        (RCX, e.ecx),
        (RDX, e.edx),
        (RSI, e.esi),
        (RDI, e.edi),
        (RBP, e.ebp),
        (RSP, e.esp),
    ] {
        s.regs[r] = v as u64;
    }
    s.rip = e.eip as u64;
    match e.mode {
        EntryMode::Real {
            cs,
            ds,
            es,
            fs,
            gs,
            ss,
        } => {
            for (seg, sel) in [(CS, cs), (DS, ds), (ES, es), (FS, fs), (GS, gs), (SS, ss)] {
                s.seg[seg] = Segment::real(sel);
            }
            s.seg[CS].attr |= attr::CODE;
            s.seg[CS].update_rights();
        }
        EntryMode::Flat32 => {
            s.cr0 |= CR0_PE;
            for seg in [CS, DS, ES, FS, GS, SS] {
                let code = seg == CS;
                let mut a = attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G;
                if code {
                    a |= attr::CODE;
                }
                let mut sg = Segment {
                    selector: if code { 0x10 } else { 0x18 },
                    attr: a,
                    limit: 0xffff_ffff,
                    ..Default::default()
                };
                sg.update_rights();
                s.seg[seg] = sg;
            }
        }
    }
    cpu.flush_tlb();
}
