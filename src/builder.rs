//! Building a [`Machine`] in small steps.

use crate::clock::ClockMode;
use ox86_jit::JitConfig;
use crate::error::MachineError;
use crate::machine::{Guest, Machine, SerialOut};

/// Builds a [`Machine`].
#[derive(Debug)]
pub struct MachineBuilder {
    ram: u64,
    serial: SerialOut,
    guest: Option<Guest>,
    no_reboot: bool,
    max_insns: Option<u64>,
    clock: ClockMode,
    jit: Option<JitConfig>,
}

impl Default for MachineBuilder {
    fn default() -> Self {
        MachineBuilder::new()
    }
}

impl MachineBuilder {
    /// A builder for a machine with 128 MiB of RAM and COM1 on stdout.
    pub fn new() -> MachineBuilder {
        MachineBuilder {
            ram: 128 << 20,
            serial: SerialOut::Stdout,
            guest: None,
            no_reboot: false,
            max_insns: None,
            clock: ClockMode::Realtime,
            jit: Some(JitConfig::default()),
        }
    }

    /// The JIT's configuration, or `None` to run the interpreter alone (`--interp`).
    pub fn jit(mut self, config: Option<JitConfig>) -> Self {
        self.jit = config;
        self
    }

    /// Guest RAM size in bytes.
    pub fn ram_size(mut self, bytes: u64) -> Self {
        self.ram = bytes;
        self
    }

    /// Where COM1's output goes.
    pub fn serial(mut self, out: SerialOut) -> Self {
        self.serial = out;
        self
    }

    /// End the run on a guest reset instead of rebooting.
    pub fn no_reboot(mut self, yes: bool) -> Self {
        self.no_reboot = yes;
        self
    }

    /// Stop after this many instructions.
    pub fn max_insns(mut self, n: u64) -> Self {
        self.max_insns = Some(n);
        self
    }

    /// Boot a kernel image (Multiboot ELF, plain ELF32; the format is detected).
    pub fn kernel(mut self, image: Vec<u8>, cmdline: String, initrd: Option<Vec<u8>>) -> Self {
        self.guest = Some(Guest::Kernel {
            image,
            cmdline,
            initrd,
        });
        self
    }

    /// Derive guest time from the instruction count: 2^shift ns per instruction. Runs
    /// are then deterministic.
    pub fn icount(mut self, shift: u32) -> Self {
        self.clock = ClockMode::Icount {
            shift: shift.min(10),
        };
        self
    }

    /// Boot the built-in demo guest.
    pub fn demo(mut self) -> Self {
        self.guest = Some(Guest::Demo);
        self
    }

    /// Creates the machine and loads its guest.
    pub fn build(self) -> Result<Machine, MachineError> {
        let guest = self.guest.ok_or(MachineError::NoGuest)?;
        Machine::new(
            self.ram,
            self.serial,
            guest,
            self.no_reboot,
            self.max_insns,
            self.clock,
            self.jit,
        )
    }
}
