//! The interface between the FPU and the CPU that runs it.

/// What the CPU gives the FPU while it executes one instruction.
pub trait X87Context {
    /// Opaque fault type of the CPU (e.g. a #PF/#GP value); passed through untouched.
    type Fault;
    /// Reads `buf.len()` bytes at the instruction's memory operand + `offset`
    /// (the CPU computed the effective address and segment).
    fn read_mem(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Fault>;
    /// Writes bytes at the memory operand + `offset`.
    fn write_mem(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Fault>;
    /// EFLAGS (for FCMOVcc).
    fn eflags(&self) -> u32;
    /// Sets ZF, PF, CF as FCOMI/FUCOMI do (and clears OF, SF, AF).
    fn set_compare_flags(&mut self, zf: bool, pf: bool, cf: bool);
    /// Writes AX (FNSTSW AX).
    fn set_ax(&mut self, value: u16);
    /// True when the CPU is in real or virtual-8086 mode (FSTENV/FSAVE layout).
    fn real_mode(&self) -> bool;
    /// True when the instruction has 16-bit operand size (FSTENV/FSAVE 14/94-byte
    /// layouts vs 28/108).
    fn operand_size_16(&self) -> bool;
    /// Offset (or linear address in real mode) of the instruction and its CS selector,
    /// recorded in FIP/FCS.
    fn instruction_pointer(&self) -> (u32, u16);
    /// Offset of the memory operand and its segment selector, recorded in FDP/FDS.
    fn data_pointer(&self) -> (u32, u16);
}

/// Why `execute` did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum X87Error<F> {
    /// A memory access faulted; the FPU state is unchanged.
    Fault(F),
    /// Not an x87 instruction (never returned for a `Code` that `is_x87` accepts).
    Unimplemented(iced_x86::Code),
}
