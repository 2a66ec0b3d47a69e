//! The PCI host: configuration mechanism #1 at ports 0xcf8-0xcff, bus 0 with an i440FX
//! host bridge and a PIIX3 ISA bridge, and the PIIX3 reset control register at 0xcf9.
//!
//! Implemented from the PCI Local Bus Specification 2.1 (3.2.2.3.2, configuration
//! mechanism #1; 6.1-6.2, the type 0 header) and the Intel 82441FX (i440FX PMC) and
//! 82371SB (PIIX3) datasheets:
//!
//! - CONFADD (0xcf8) is a 32-bit register reached only by dword accesses at 0xcf8: bit 31
//!   enables configuration cycles, bits 23-16 select the bus, 15-11 the device, 10-8 the
//!   function, 7-2 the dword register; bits 30-24 and 1-0 are reserved and read 0.
//! - CONFDATA (0xcfc-0xcff) forwards byte, word and dword accesses at any offset to the
//!   selected function's configuration space (register + offset within the window) while
//!   bit 31 is set; otherwise it is ordinary I/O space, which nobody claims (reads all
//!   ones).
//! - A byte access at 0xcf9 is PIIX3's Reset Control Register ([`ResetControl`]); other
//!   non-dword accesses to 0xcf8-0xcfb reach neither register.
//!
//! Functions that do not exist, and every function on another bus, read 0xffff_ffff
//! (master abort). Configuration spaces are 256 bytes with per-byte write masks: IDs,
//! class codes, header type and BARs (these two devices have none) are read-only, the
//! status register's error bits are write-one-to-clear, and the device-specific registers
//! 0x40-0xff hold whatever the guest writes (PAM, SMRAM, PIRQ routing, ...) without
//! further effect.

use ox86_mmu::Port;
use thiserror::Error;

use crate::bus::BusDevice;
use crate::requests::Requests;
use crate::sysctl::ResetControl;

/// CONFADD, the first port of the host's window.
pub const PCI_CONFIG_ADDRESS: Port = Port(0xcf8);
/// CONFDATA.
pub const PCI_CONFIG_DATA: Port = Port(0xcfc);
/// Number of ports of the window (0xcf8-0xcff).
pub const PCI_PORTS_LEN: u16 = 8;
/// Device offset of the reset control register (port 0xcf9).
pub const OFFSET_RESET_CONTROL: u64 = 1;
const OFFSET_DATA: u64 = 4;

/// CONFADD bit 31: configuration space enable.
pub const CONFADD_ENABLE: u32 = 0x8000_0000;
/// The CONFADD bits that hold a value; the rest read 0.
const CONFADD_MASK: u32 = 0x80ff_fffc;

/// Device number of the i440FX host bridge on bus 0.
pub const HOST_BRIDGE_DEVICE: u8 = 0;
/// Device number of the PIIX3 on bus 0 (function 0: the ISA bridge).
pub const ISA_BRIDGE_DEVICE: u8 = 1;

/// Vendor and device IDs.
pub mod ids {
    /// Intel.
    pub const VENDOR_INTEL: u16 = 0x8086;
    /// 82441FX PMC (i440FX host bridge).
    pub const I440FX: u16 = 0x1237;
    /// 82371SB PIIX3 function 0 (PCI-to-ISA bridge).
    pub const PIIX3_ISA: u16 = 0x7000;
}

/// Type 0 header offsets.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u8 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u8 = 0x02;
    /// Command (16 bits).
    pub const COMMAND: u8 = 0x04;
    /// Status (16 bits).
    pub const STATUS: u8 = 0x06;
    /// Revision ID.
    pub const REVISION: u8 = 0x08;
    /// Class code (24 bits: programming interface, subclass, base class).
    pub const CLASS: u8 = 0x09;
    /// Cache line size.
    pub const CACHE_LINE: u8 = 0x0c;
    /// Latency timer.
    pub const LATENCY: u8 = 0x0d;
    /// Header type (bit 7: multi-function).
    pub const HEADER_TYPE: u8 = 0x0e;
    /// First base address register.
    pub const BAR0: u8 = 0x10;
    /// Interrupt line.
    pub const INTERRUPT_LINE: u8 = 0x3c;
    /// Interrupt pin.
    pub const INTERRUPT_PIN: u8 = 0x3d;
    /// First device-specific register.
    pub const DEVICE_SPECIFIC: u8 = 0x40;
}

/// PIIX3 function 0 registers.
pub mod piix3 {
    /// PIRQ[A-D] route control (0x60-0x63): bit 7 = routing disabled, bits 3-0 the IRQ.
    pub const PIRQRC: u8 = 0x60;
    /// Value of a PIRQ route register with routing disabled (the power-on default).
    pub const PIRQ_DISABLED: u8 = 0x80;
}

/// Status bits that are write-one-to-clear (parity/system error, master/target aborts).
const STATUS_W1C: u16 = 0xf900;
/// Command bits a guest may change (I/O, memory, bus master, parity, SERR#).
const COMMAND_WRITABLE: u16 = 0x0147;

/// Errors from adding a function to the host.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PciError {
    /// Device numbers are 0-31, function numbers 0-7.
    #[error("no PCI slot {device:#x}.{function}")]
    InvalidSlot {
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
    /// Another function already answers at this address.
    #[error("PCI slot {device:#x}.{function} is taken")]
    Occupied {
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
}

/// A PCI function's configuration space as the host bridge sees it.
pub trait PciFunction: Send {
    /// Reads `data.len()` bytes (1, 2 or 4, within one dword) at `offset`.
    fn config_read(&mut self, offset: u8, data: &mut [u8]);
    /// Writes `data` (1, 2 or 4 bytes within one dword) at `offset`.
    fn config_write(&mut self, offset: u8, data: &[u8]);
    /// Returns to the power-on state.
    fn reset(&mut self);
    /// The function's state as bytes (its registers), for digests and snapshots.
    fn state(&self) -> Vec<u8>;
    /// Puts the function back in a state [`PciFunction::state`] gave.
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
}

/// 256 bytes of configuration registers with write masks; a plain [`PciFunction`] for
/// functions whose registers have no side effects.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u8; 256],
    initial: [u8; 256],
    /// Bits the guest may write.
    writable: [u8; 256],
    /// Bits a written 1 clears.
    w1c: [u8; 256],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.u16(reg::VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.u16(reg::DEVICE_ID)))
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A type 0 header with the given IDs, 24-bit class code (base class in bits 23-16),
    /// revision and header type; command and status start at 0. Writable: the command
    /// register's I/O, memory, bus-master, parity and SERR# enables, the status error bits
    /// (write one to clear), the interrupt line and the device-specific registers
    /// 0x40-0xff. Everything else, BARs included, reads as set here.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, header_type: u8) -> Self {
        let mut c = ConfigSpace {
            regs: [0; 256],
            initial: [0; 256],
            writable: [0; 256],
            w1c: [0; 256],
        };
        c.init_u16(reg::VENDOR_ID, vendor);
        c.init_u16(reg::DEVICE_ID, device);
        c.init_u8(reg::REVISION, revision);
        for (i, b) in class.to_le_bytes()[..3].iter().enumerate() {
            c.init_u8(reg::CLASS + i as u8, *b);
        }
        c.init_u8(reg::HEADER_TYPE, header_type);
        c.set_writable(reg::COMMAND, COMMAND_WRITABLE as u8);
        c.set_writable(reg::COMMAND + 1, (COMMAND_WRITABLE >> 8) as u8);
        c.w1c[reg::STATUS as usize] = STATUS_W1C as u8;
        c.w1c[reg::STATUS as usize + 1] = (STATUS_W1C >> 8) as u8;
        c.set_writable(reg::INTERRUPT_LINE, 0xff);
        for off in reg::DEVICE_SPECIFIC..=0xff {
            c.set_writable(off, 0xff);
        }
        c
    }

    /// Sets the power-on value of a byte.
    pub fn init_u8(&mut self, offset: u8, v: u8) {
        self.regs[offset as usize] = v;
        self.initial[offset as usize] = v;
    }

    /// Sets the power-on value of a little-endian word.
    pub fn init_u16(&mut self, offset: u8, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.init_u8(offset.wrapping_add(i as u8), b);
        }
    }

    /// Sets which bits of a byte the guest may write.
    pub fn set_writable(&mut self, offset: u8, mask: u8) {
        self.writable[offset as usize] = mask;
    }

    /// A byte's current value.
    pub fn u8(&self, offset: u8) -> u8 {
        self.regs[offset as usize]
    }

    /// A little-endian word's current value.
    pub fn u16(&self, offset: u8) -> u16 {
        u16::from_le_bytes([self.u8(offset), self.u8(offset.wrapping_add(1))])
    }

    /// A little-endian dword's current value.
    pub fn u32(&self, offset: u8) -> u32 {
        let lo = self.u16(offset) as u32;
        lo | (self.u16(offset.wrapping_add(2)) as u32) << 16
    }
}

impl PciFunction for ConfigSpace {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.u8(offset.wrapping_add(i as u8));
        }
    }

    fn config_write(&mut self, offset: u8, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = offset.wrapping_add(i as u8) as usize;
            let w = self.writable[o];
            self.regs[o] = (self.regs[o] & !w) | (v & w);
            self.regs[o] &= !(v & self.w1c[o]);
        }
    }

    fn reset(&mut self) {
        self.regs = self.initial;
    }
    fn state(&self) -> Vec<u8> {
        self.regs.to_vec()
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.regs = state
            .try_into()
            .map_err(|_| format!("PCI function state of {} bytes", state.len()))?;
        Ok(())
    }
}

/// The i440FX PMC (bus 0, device 0): host bridge, class 0x060000, revision 2.
pub fn i440fx_host_bridge() -> ConfigSpace {
    let mut c = ConfigSpace::new(ids::VENDOR_INTEL, ids::I440FX, 0x06_00_00, 0x02, 0x00);
    // 82441FX PCICMD default 0006h (memory access and bus master enabled), PCISTS
    // 0280h (fast back-to-back capable, medium DEVSEL timing); MLT bits 7-3 writable.
    c.init_u16(reg::COMMAND, 0x0006);
    c.init_u16(reg::STATUS, 0x0280);
    c.set_writable(reg::LATENCY, 0xf8);
    c
}

/// The PIIX3 function 0 (bus 0, device 1): PCI-to-ISA bridge, class 0x060100, a
/// multi-function device. PIRQ routing starts disabled (0x80), as at power-on.
pub fn piix3_isa_bridge() -> ConfigSpace {
    let mut c = ConfigSpace::new(ids::VENDOR_INTEL, ids::PIIX3_ISA, 0x06_01_00, 0x00, 0x80);
    // 82371SB defaults: PCICMD 0007h, PCISTS 0200h, IORT 4Dh, XBCS 0003h, PIRQRC[A:D]
    // 80h, TOM 02h, MBIRQ0/1 80h, MBDMA0/1 0Ch.
    c.init_u16(reg::COMMAND, 0x0007);
    c.init_u16(reg::STATUS, 0x0200);
    c.init_u8(0x4c, 0x4d);
    c.init_u16(0x4e, 0x0003);
    for i in 0..4 {
        c.init_u8(piix3::PIRQRC + i, piix3::PIRQ_DISABLED);
    }
    c.init_u8(0x69, 0x02);
    c.init_u8(0x70, 0x80);
    c.init_u8(0x71, 0x80);
    c.init_u8(0x76, 0x0c);
    c.init_u8(0x77, 0x0c);
    c
}

/// The host bridge's I/O window: CONFADD/CONFDATA for bus 0 and the reset control
/// register.
pub struct PciHost {
    address: u32,
    /// Functions on bus 0 by `device << 3 | function`, sorted.
    functions: Vec<(u8, Box<dyn PciFunction>)>,
    reset_ctl: ResetControl,
}

impl serde::Serialize for PciHost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let functions: Vec<(u8, Vec<u8>)> = self
            .functions
            .iter()
            .map(|(k, f)| (*k, f.state()))
            .collect();
        (self.address, functions, &self.reset_ctl).serialize(s)
    }
}

impl PciHost {
    /// Puts the host bridge and its functions back in the state its serialisation
    /// gave: the address register, each function's registers, the reset control.
    pub fn restore(
        &mut self,
        (address, functions, reset_ctl): (u32, Vec<(u8, Vec<u8>)>, ResetControl),
    ) -> Result<(), String> {
        if functions.len() != self.functions.len() {
            return Err(format!(
                "{} PCI functions saved, {} here",
                functions.len(),
                self.functions.len()
            ));
        }
        for ((k, state), (here, f)) in functions.iter().zip(&mut self.functions) {
            if k != here {
                return Err(format!("PCI function {k:#x} saved, {here:#x} here"));
            }
            f.restore(state)?;
        }
        self.address = address;
        self.reset_ctl.restore(reset_ctl);
        Ok(())
    }
}

impl std::fmt::Debug for PciHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHost")
            .field("address", &format_args!("{:#010x}", self.address))
            .field(
                "functions",
                &self.functions.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            )
            .field("reset_ctl", &self.reset_ctl)
            .finish()
    }
}

impl PciHost {
    /// The host with the i440FX at 00.0 and the PIIX3 ISA bridge at 01.0, posting 0xcf9
    /// resets to `requests`.
    pub fn new(requests: Requests) -> Self {
        let mut h = PciHost {
            address: 0,
            functions: Vec::new(),
            reset_ctl: ResetControl::new(requests),
        };
        let standard: [(u8, ConfigSpace); 2] = [
            (HOST_BRIDGE_DEVICE, i440fx_host_bridge()),
            (ISA_BRIDGE_DEVICE, piix3_isa_bridge()),
        ];
        for (dev, f) in standard {
            if let Err(e) = h.add_function(dev, 0, Box::new(f)) {
                unreachable!("standard PCI functions: {e}");
            }
        }
        h
    }

    /// Adds a function on bus 0.
    pub fn add_function(
        &mut self,
        device: u8,
        function: u8,
        f: Box<dyn PciFunction>,
    ) -> Result<(), PciError> {
        if device > 31 || function > 7 {
            return Err(PciError::InvalidSlot { device, function });
        }
        let devfn = device << 3 | function;
        match self.functions.binary_search_by_key(&devfn, |(d, _)| *d) {
            Ok(_) => Err(PciError::Occupied { device, function }),
            Err(i) => {
                self.functions.insert(i, (devfn, f));
                Ok(())
            }
        }
    }

    /// The function at bus 0, `device`.`function`.
    pub fn function_mut(
        &mut self,
        device: u8,
        function: u8,
    ) -> Option<&mut (dyn PciFunction + 'static)> {
        let devfn = device.checked_mul(8)?.checked_add(function)?;
        self.function_by_devfn(devfn)
    }

    /// CONFADD.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Back to the power-on state: CONFADD 0, 0xcf9 clear, every function reset.
    pub fn reset(&mut self) {
        self.address = 0;
        self.reset_ctl.reset();
        for (_, f) in &mut self.functions {
            f.reset();
        }
    }

    fn function_by_devfn(&mut self, devfn: u8) -> Option<&mut (dyn PciFunction + 'static)> {
        let i = self
            .functions
            .binary_search_by_key(&devfn, |(d, _)| *d)
            .ok()?;
        Some(&mut *self.functions[i].1)
    }

    /// The function and register CONFDATA reaches, if configuration cycles are enabled
    /// and the function exists.
    fn selected(&mut self) -> Option<(&mut (dyn PciFunction + 'static), u8)> {
        let a = self.address;
        if a & CONFADD_ENABLE == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let reg = a as u8;
        self.function_by_devfn((a >> 8) as u8).map(|f| (f, reg))
    }
}

impl BusDevice for PciHost {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (OFFSET_RESET_CONTROL, 1) => data[0] = self.reset_ctl.read_reg(),
            (OFFSET_DATA..=7, n) if offset as usize + n <= 8 => {
                if let Some((f, reg)) = self.selected() {
                    f.config_read(reg + (offset - OFFSET_DATA) as u8, data);
                }
            }
            _ => tracing::trace!(offset, len = data.len(), "PCI host: stray read"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address = v & CONFADD_MASK;
            }
            (OFFSET_RESET_CONTROL, 1) => self.reset_ctl.write_reg(data[0]),
            (OFFSET_DATA..=7, n) if offset as usize + n <= 8 => {
                if let Some((f, reg)) = self.selected() {
                    f.config_write(reg + (offset - OFFSET_DATA) as u8, data);
                }
            }
            _ => tracing::trace!(offset, len = data.len(), "PCI host: stray write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::ResetKind;

    fn host() -> (PciHost, Requests) {
        let r = Requests::new(true);
        (PciHost::new(r.clone()), r)
    }

    fn outl(h: &mut PciHost, off: u64, v: u32) {
        h.write(off, &v.to_le_bytes());
    }

    fn inl(h: &mut PciHost, off: u64) -> u32 {
        let mut b = [0; 4];
        h.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn inw(h: &mut PciHost, off: u64) -> u16 {
        let mut b = [0; 2];
        h.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn inb(h: &mut PciHost, off: u64) -> u8 {
        let mut b = [0];
        h.read(off, &mut b);
        b[0]
    }

    /// arch/x86/pci/early.c / direct.c: PCI_CONF1_ADDRESS(bus, devfn, reg).
    fn conf1(bus: u32, devfn: u32, reg: u32) -> u32 {
        0x8000_0000 | (bus << 16) | (devfn << 8) | (reg & 0xfc)
    }

    /// pci_conf1_read: address, then inb/inw/inl at 0xcfc + (reg & 3 / 2 / 0).
    fn conf1_read(h: &mut PciHost, bus: u32, devfn: u32, reg: u32, len: usize) -> u32 {
        outl(h, 0, conf1(bus, devfn, reg));
        match len {
            1 => inb(h, 4 + (reg & 3) as u64) as u32,
            2 => inw(h, 4 + (reg & 2) as u64) as u32,
            _ => inl(h, 4),
        }
    }

    fn conf1_write(h: &mut PciHost, devfn: u32, reg: u32, len: usize, v: u32) {
        outl(h, 0, conf1(0, devfn, reg));
        let off = 4 + (reg & (4 - len as u32)) as u64;
        h.write(off, &v.to_le_bytes()[..len]);
    }

    #[test]
    fn linux_pci_check_type1() {
        // direct.c pci_check_type1: outb(0x01, 0xCFB); tmp = inl(0xCF8);
        // outl(0x80000000, 0xCF8); inl(0xCF8) == 0x80000000; outl(tmp, 0xCF8).
        let (mut h, _) = host();
        h.write(3, &[0x01]);
        let tmp = inl(&mut h, 0);
        assert_eq!(tmp, 0);
        outl(&mut h, 0, 0x8000_0000);
        assert_eq!(inl(&mut h, 0), 0x8000_0000);
        // pci_sanity_check (no DMI year): class word at 0x0a of 00.0 is a host bridge.
        assert_eq!(conf1_read(&mut h, 0, 0, 0x0a, 2), 0x0600);
        outl(&mut h, 0, tmp);
        assert_eq!(h.address(), 0);
        // pci_check_type2 must fail on a type 1 host: byte reads of 0xcf8/0xcfa are not 0.
        h.write(3, &[0]);
        h.write(0, &[0]);
        h.write(2, &[0]);
        assert_ne!(inb(&mut h, 0), 0);
    }

    #[test]
    fn confadd_reserved_bits_read_zero() {
        // 82441FX CONFADD: bits 30-24 and 1-0 reserved.
        let (mut h, _) = host();
        outl(&mut h, 0, 0xffff_ffff);
        assert_eq!(inl(&mut h, 0), 0x80ff_fffc);
        // Word and byte writes do not reach CONFADD.
        h.write(0, &[0, 0]);
        h.write(2, &[0]);
        assert_eq!(inl(&mut h, 0), 0x80ff_fffc);
        assert_eq!(inw(&mut h, 0), 0xffff);
    }

    #[test]
    fn ids_class_and_header_of_bus0() {
        let (mut h, _) = host();
        assert_eq!(conf1_read(&mut h, 0, 0, 0, 4), 0x1237_8086);
        assert_eq!(conf1_read(&mut h, 0, 0, 8, 4), 0x0600_0002);
        assert_eq!(conf1_read(&mut h, 0, 0, 0x0e, 1), 0x00);
        assert_eq!(conf1_read(&mut h, 0, 8, 0, 4), 0x7000_8086);
        assert_eq!(conf1_read(&mut h, 0, 8, 8, 4) >> 8, 0x06_01_00);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x0e, 1), 0x80);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x60, 4), 0x8080_8080);
        // Byte and word reads at every offset in the data window.
        for reg in 0..4 {
            assert_eq!(
                conf1_read(&mut h, 0, 0, reg, 1),
                (0x1237_8086u32 >> (8 * reg)) & 0xff
            );
        }
        assert_eq!(conf1_read(&mut h, 0, 0, 2, 2), 0x1237);
        // Absent devices/functions and other buses: master abort, all ones.
        assert_eq!(conf1_read(&mut h, 0, 9, 0, 4), 0xffff_ffff);
        assert_eq!(conf1_read(&mut h, 0, 2 << 3, 0, 4), 0xffff_ffff);
        assert_eq!(conf1_read(&mut h, 1, 0, 0, 4), 0xffff_ffff);
        assert_eq!(conf1_read(&mut h, 0, 0xff, 0, 2), 0xffff);
        // Configuration cycles disabled: CONFDATA is plain (unclaimed) I/O.
        outl(&mut h, 0, 0);
        assert_eq!(inl(&mut h, 4), 0xffff_ffff);
    }

    #[test]
    fn linux_scan_of_00_0_is_complete() {
        // Linux's device scan reads vendor/device, class, header type, then sizes every
        // BAR by writing all ones and reading back: no BARs here, so they stay 0.
        let (mut h, _) = host();
        for devfn in [0u32, 8] {
            for bar in (0x10..=0x24).step_by(4).chain([0x30]) {
                conf1_write(&mut h, devfn, bar, 4, 0xffff_ffff);
                assert_eq!(conf1_read(&mut h, 0, devfn, bar, 4), 0, "bar {bar:#x}");
            }
            assert_eq!(conf1_read(&mut h, 0, devfn, 0x3d, 1), 0, "no interrupt pin");
        }
    }

    #[test]
    fn read_only_writable_and_w1c_registers() {
        // PCI 2.1 6.2: IDs/class read-only; status error bits are cleared by writing 1.
        let (mut h, _) = host();
        conf1_write(&mut h, 0, 0, 4, 0);
        assert_eq!(conf1_read(&mut h, 0, 0, 0, 4), 0x1237_8086);
        conf1_write(&mut h, 8, 0x08, 4, 0);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x08, 4), 0x0601_0000);
        // Command: writable enables only.
        conf1_write(&mut h, 0, 0x04, 2, 0xffff);
        assert_eq!(conf1_read(&mut h, 0, 0, 0x04, 2), 0x0147);
        // Status: a guest write of 1 to a non-error bit changes nothing.
        conf1_write(&mut h, 0, 0x06, 2, 0xffff);
        assert_eq!(conf1_read(&mut h, 0, 0, 0x06, 2), 0x0280);
        // PIRQ routing is writable (PIRQA -> IRQ 11), and the passive release bit.
        conf1_write(&mut h, 8, 0x60, 1, 0x0b);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x60, 4), 0x8080_800b);
        conf1_write(&mut h, 8, 0x82, 1, 0x02);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x82, 1), 0x02);
        // Word write to the upper half of a dword (0xcfe).
        conf1_write(&mut h, 8, 0x62, 2, 0x0a0a);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x60, 4), 0x0a0a_800b);
        // Interrupt line is writable, latency timer of the host bridge bits 7-3.
        conf1_write(&mut h, 0, 0x3c, 1, 0x0e);
        conf1_write(&mut h, 0, 0x0d, 1, 0xff);
        assert_eq!(conf1_read(&mut h, 0, 0, 0x3c, 1), 0x0e);
        assert_eq!(conf1_read(&mut h, 0, 0, 0x0d, 1), 0xf8);
        // Reset restores power-on values.
        h.reset();
        assert_eq!(h.address(), 0);
        assert_eq!(conf1_read(&mut h, 0, 8, 0x60, 4), 0x8080_8080);
        assert_eq!(conf1_read(&mut h, 0, 0, 0x04, 2), 0x0006);
    }

    #[test]
    fn status_error_bits_clear_on_write_one() {
        let mut c = piix3_isa_bridge();
        c.init_u16(reg::STATUS, 0xf200);
        c.config_write(reg::STATUS, &[0x00, 0x30]);
        assert_eq!(c.u16(reg::STATUS), 0xc200);
        c.config_write(reg::STATUS, &0xffffu16.to_le_bytes());
        assert_eq!(c.u16(reg::STATUS), 0x0200);
    }

    #[test]
    fn cf9_byte_is_reset_control_dword_cf8_is_address() {
        // PIIX3: RCR is the byte at 0xcf9; a dword at 0xcf8 is CONFADD and does not
        // reach RCR even though it covers 0xcf9.
        let (mut h, r) = host();
        outl(&mut h, 0, 0x8000_0600);
        assert!(!r.is_pending());
        h.write(OFFSET_RESET_CONTROL, &[0x02]);
        assert_eq!(inb(&mut h, 1), 0x02);
        assert_eq!(h.address(), 0x8000_0600);
        h.write(OFFSET_RESET_CONTROL, &[0x06]);
        assert_eq!(r.take().reset, Some(ResetKind::Hard));
        h.write(OFFSET_RESET_CONTROL, &[0x04]);
        assert_eq!(r.take().reset, Some(ResetKind::Soft));
        // Word access at 0xcf9: neither register.
        h.write(1, &[0x06, 0x06]);
        assert!(!r.is_pending());
    }

    #[test]
    fn add_function_checks_slots() {
        let (mut h, _) = host();
        let f = || Box::new(ConfigSpace::new(0x1234, 0x1111, 0x03_00_00, 1, 0));
        assert_eq!(
            h.add_function(0, 0, f()),
            Err(PciError::Occupied {
                device: 0,
                function: 0
            })
        );
        assert_eq!(
            h.add_function(32, 0, f()),
            Err(PciError::InvalidSlot {
                device: 32,
                function: 0
            })
        );
        h.add_function(2, 0, f()).unwrap();
        assert_eq!(conf1_read(&mut h, 0, 2 << 3, 0, 4), 0x1111_1234);
        assert!(h.function_mut(1, 0).is_some());
        assert!(h.function_mut(1, 1).is_none());
        assert!(h.function_mut(255, 0).is_none());
    }

    #[test]
    fn every_offset_and_size_is_safe() {
        let (mut h, _) = host();
        for addr in [0u32, 0x8000_00fc, 0x8000_08ff, 0xffff_ffff] {
            outl(&mut h, 0, addr);
            for off in 0..8u64 {
                for len in 1..=(8 - off as usize) {
                    let mut b = vec![0u8; len];
                    h.read(off, &mut b);
                    if off != 0 || len != 4 {
                        h.write(off, &b);
                    }
                }
            }
        }
    }
}
