//! The PC platform: the standard devices at their standard ports, as the CPU's
//! [`IoBus`].
//!
//! | ports | device | IRQ |
//! |---|---|---|
//! | 0x20-0x21, 0xa0-0xa1, 0x4d0-0x4d1 | [`Pic`] (8259A pair + ELCR) | (INTR) |
//! | 0x40-0x43, 0x61 | [`Pit`] (8254, port B) | 0 |
//! | 0x60, 0x64 | [`I8042`] (keyboard controller, PS/2 keyboard) | 1, 12 |
//! | 0x70-0x71 | [`Cmos`] (MC146818 RTC + CMOS RAM) | 8 |
//! | 0x3f8, 0x2f8, 0x3e8, 0x2e8 (+8) | [`Uart`] COM1-COM4 | 4, 3, 4, 3 |
//! | 0x80 | [`PostCode`] | |
//! | 0x92 | [`SystemControlA`] (A20, fast reset) | |
//! | 0xcf8-0xcff | [`PciHost`] (config mechanism #1, i440FX + PIIX3; 0xcf9 reset control) | |
//! | 0xf4-0xf7 | [`DebugExit`] | |
//!
//! More devices are attached with [`Platform::attach_port_device`] and
//! [`Platform::attach_mmio_device`]; they get interrupt lines from [`Platform::irq_line`]
//! and post exit/reset/A20 requests through [`Platform::requests`].
//!
//! Time: the machine owns a virtual clock and calls [`Platform::advance_to`] with the
//! current virtual time before it forwards each I/O access (and whenever it reaches
//! [`Platform::next_event_ns`]); register reads then reflect that exact time. Accesses
//! wider than a device's window are split at the window's end; bytes nobody claims read
//! as 0xff.

use std::io::{self, Write};

use ox86_mmu::{ones, IoBus, PhysAddr, Port};
use thiserror::Error;

use crate::bus::{BusDevice, BusError, DeviceId, MmioBus, PortBus};
use crate::cmos::{Cmos, MemoryLayout, CMOS_PORT, CMOS_PORTS_LEN, RTC_IRQ};
use crate::debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use crate::i8042::{
    KeyboardInput, AUX_IRQ, I8042, I8042_COMMAND_PORT, I8042_DATA_PORT, KBD_IRQ, OFFSET_COMMAND,
    OFFSET_DATA,
};
use crate::irq::{IrqLine, IrqLines};
use crate::pci::{PciHost, PCI_CONFIG_ADDRESS, PCI_PORTS_LEN};
use crate::pic::{Pic, OFFSET_ELCR, OFFSET_MASTER, OFFSET_SLAVE, PIC_ELCR, PIC_MASTER, PIC_SLAVE};
use crate::pit::{Pit, OFFSET_PORT_61, PIT_BASE, PIT_IRQ, PIT_PORTS_LEN, PORT_61};
use crate::post::{PostCode, POST_PORT};
use crate::requests::{PendingRequests, Requests};
use crate::sysctl::{ResetControl, SystemControlA, SYSCTL_PORT_A};
use crate::uart::{SerialInput, Uart, UartState, COM_IRQS, COM_PORTS, UART_PORTS_LEN};

/// Default start of the PCI hole: RAM above it is remapped above 4 GiB.
pub const DEFAULT_PCI_HOLE_START: u64 = 0xe000_0000;
/// Default RTC start time (2024-01-01 00:00:00 UTC), for deterministic runs.
pub const DEFAULT_RTC_START: u64 = 1_704_067_200;

/// Errors from building a platform.
#[derive(Debug, Error)]
pub enum PlatformError {
    /// A device could not be attached.
    #[error("attaching {device}: {source}")]
    Attach {
        /// Which device.
        device: &'static str,
        /// Why.
        source: BusError,
    },
}

/// What the platform is built from.
pub struct PlatformConfig {
    /// Output sinks of COM1-COM4; `None` discards that port's output.
    pub serial_out: [Option<Box<dyn Write + Send>>; 4],
    /// Guest RAM size in bytes (for the CMOS memory-size bytes).
    pub ram_size: u64,
    /// RAM at or above this address is mapped above 4 GiB.
    pub pci_hole_start: u64,
    /// RTC time at virtual time 0, in seconds since 1970-01-01 UTC (pass the host clock
    /// for a live machine, a constant for deterministic runs).
    pub rtc_start_unix_secs: u64,
    /// Initial state of the A20 gate.
    pub a20_enabled: bool,
}

impl std::fmt::Debug for PlatformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformConfig")
            .field(
                "serial_out",
                &self.serial_out.each_ref().map(|s| s.is_some()),
            )
            .field("ram_size", &self.ram_size)
            .field("pci_hole_start", &self.pci_hole_start)
            .field("rtc_start_unix_secs", &self.rtc_start_unix_secs)
            .field("a20_enabled", &self.a20_enabled)
            .finish()
    }
}

impl Default for PlatformConfig {
    /// No serial output, 128 MiB, the default PCI hole, RTC at [`DEFAULT_RTC_START`], A20
    /// enabled.
    fn default() -> Self {
        PlatformConfig {
            serial_out: [None, None, None, None],
            ram_size: 128 << 20,
            pci_hole_start: DEFAULT_PCI_HOLE_START,
            rtc_start_unix_secs: DEFAULT_RTC_START,
            a20_enabled: true,
        }
    }
}

impl PlatformConfig {
    /// Sends COM1's output to `out`.
    pub fn with_com1(mut self, out: Box<dyn Write + Send>) -> Self {
        self.serial_out[0] = Some(out);
        self
    }

    /// Sends the output of COM`index + 1` (`index` 0-3) to `out`; other indexes are
    /// ignored.
    pub fn with_serial(mut self, index: usize, out: Box<dyn Write + Send>) -> Self {
        if let Some(slot) = self.serial_out.get_mut(index) {
            *slot = Some(out);
        }
        self
    }

    /// Sets the RAM size.
    pub fn with_ram_size(mut self, bytes: u64) -> Self {
        self.ram_size = bytes;
        self
    }

    /// Sets the RTC start time.
    pub fn with_rtc_start(mut self, unix_secs: u64) -> Self {
        self.rtc_start_unix_secs = unix_secs;
        self
    }
}

/// Where a port or MMIO range leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Pic,
    Pit,
    Cmos,
    Uart(usize),
    DebugExit,
    Post,
    SysCtlA,
    I8042,
    Pci,
    Ext(usize),
}

/// The PC's devices behind one [`IoBus`].
pub struct Platform {
    now_ns: u64,
    ports: PortBus<Slot>,
    mmio: MmioBus<Slot>,
    irqs: IrqLines,
    requests: Requests,
    a20_default: bool,
    pic: Pic,
    pit: Pit,
    cmos: Cmos,
    uarts: [Uart; 4],
    debug_exit: DebugExit,
    post: PostCode,
    sysctl_a: SystemControlA,
    i8042: I8042,
    pci: PciHost,
    ext: Vec<Box<dyn BusDevice>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("now_ns", &self.now_ns)
            .field("pic", &self.pic)
            .field("ext_devices", &self.ext.len())
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// Builds the platform with every standard device attached.
    pub fn new(config: PlatformConfig) -> Result<Self, PlatformError> {
        let irqs = IrqLines::new();
        let requests = Requests::new(config.a20_enabled);
        let below_4g = config.ram_size.min(config.pci_hole_start);
        let memory = MemoryLayout {
            below_4g,
            above_4g: config.ram_size - below_4g,
        };
        let [s0, s1, s2, s3] = config.serial_out;
        let sink = |s: Option<Box<dyn Write + Send>>| s.unwrap_or_else(|| Box::new(io::sink()));
        let uarts = [s0, s1, s2, s3]
            .map(sink)
            .into_iter()
            .zip(COM_IRQS)
            .map(|(out, irq)| Uart::new(out, irqs.line(irq)));
        let uarts: Vec<Uart> = uarts.collect();
        let uarts: [Uart; 4] = match uarts.try_into() {
            Ok(u) => u,
            Err(_) => unreachable!("four sinks give four UARTs"),
        };
        let mut p = Platform {
            now_ns: 0,
            ports: PortBus::new(),
            mmio: MmioBus::new(),
            pic: Pic::new(),
            pit: Pit::new(irqs.line(PIT_IRQ)),
            cmos: Cmos::new(config.rtc_start_unix_secs, memory, irqs.line(RTC_IRQ)),
            uarts,
            debug_exit: DebugExit::new(requests.clone()),
            post: PostCode::new(),
            sysctl_a: SystemControlA::new(requests.clone()),
            i8042: I8042::new(irqs.line(KBD_IRQ), irqs.line(AUX_IRQ), requests.clone()),
            pci: PciHost::new(requests.clone()),
            ext: Vec::new(),
            irqs,
            requests,
            a20_default: config.a20_enabled,
        };
        // Initial line levels (the PIT's OUT0 starts high) are wiring, not edges.
        if let Some(changes) = p.irqs.take_changes() {
            for irq in 0..16u8 {
                p.pic.init_line(irq, changes.levels & (1 << irq) != 0);
            }
        }
        let map: [(&'static str, Port, u16, Slot, u64); 13] = [
            ("PIC master", PIC_MASTER, 2, Slot::Pic, OFFSET_MASTER),
            ("PIC slave", PIC_SLAVE, 2, Slot::Pic, OFFSET_SLAVE),
            ("ELCR", PIC_ELCR, 2, Slot::Pic, OFFSET_ELCR),
            ("PIT", PIT_BASE, PIT_PORTS_LEN, Slot::Pit, 0),
            ("port 0x61", PORT_61, 1, Slot::Pit, OFFSET_PORT_61),
            ("CMOS", CMOS_PORT, CMOS_PORTS_LEN, Slot::Cmos, 0),
            (
                "debug-exit",
                DEBUG_EXIT_PORT,
                DEBUG_EXIT_LEN,
                Slot::DebugExit,
                0,
            ),
            ("POST", POST_PORT, 1, Slot::Post, 0),
            ("port 0x92", SYSCTL_PORT_A, 1, Slot::SysCtlA, 0),
            ("i8042 data", I8042_DATA_PORT, 1, Slot::I8042, OFFSET_DATA),
            (
                "i8042 command",
                I8042_COMMAND_PORT,
                1,
                Slot::I8042,
                OFFSET_COMMAND,
            ),
            ("PCI host", PCI_CONFIG_ADDRESS, PCI_PORTS_LEN, Slot::Pci, 0),
            ("COM1", COM_PORTS[0], UART_PORTS_LEN, Slot::Uart(0), 0),
        ];
        for (device, base, len, slot, offset) in map {
            p.ports
                .insert_at_offset(base, len, slot, offset)
                .map_err(|source| PlatformError::Attach { device, source })?;
        }
        for (i, (device, base)) in [
            ("COM2", COM_PORTS[1]),
            ("COM3", COM_PORTS[2]),
            ("COM4", COM_PORTS[3]),
        ]
        .into_iter()
        .enumerate()
        {
            p.ports
                .insert(base, UART_PORTS_LEN, Slot::Uart(i + 1))
                .map_err(|source| PlatformError::Attach { device, source })?;
        }
        Ok(p)
    }

    /// Attaches `device` at ports `base..base + len`.
    pub fn attach_port_device(
        &mut self,
        base: Port,
        len: u16,
        device: Box<dyn BusDevice>,
    ) -> Result<DeviceId, BusError> {
        let id = self.ext.len();
        self.ports.insert(base, len, Slot::Ext(id))?;
        self.ext.push(device);
        Ok(DeviceId(id))
    }

    /// Attaches `device` at physical addresses `base..base + len`.
    pub fn attach_mmio_device(
        &mut self,
        base: PhysAddr,
        len: u64,
        device: Box<dyn BusDevice>,
    ) -> Result<DeviceId, BusError> {
        let id = self.ext.len();
        self.mmio.insert(base, len, Slot::Ext(id))?;
        self.ext.push(device);
        Ok(DeviceId(id))
    }

    /// Maps another port range to an attached device, at device offsets starting at
    /// `first_offset` (a device answering several windows).
    pub fn map_ports(
        &mut self,
        id: DeviceId,
        base: Port,
        len: u16,
        first_offset: u64,
    ) -> Result<(), BusError> {
        if id.0 >= self.ext.len() {
            return Err(BusError::NotMapped(base.0 as u64));
        }
        self.ports
            .insert_at_offset(base, len, Slot::Ext(id.0), first_offset)
    }

    /// Unmaps the port range starting at `base` (for replacing a standard device, e.g.
    /// the PCI host at 0xcf8-0xcff).
    pub fn unmap_ports(&mut self, base: Port) -> Result<(), BusError> {
        self.ports.remove(base).map(|_| ())
    }

    /// An attached device, for the machine to configure it.
    pub fn device_mut(&mut self, id: DeviceId) -> Option<&mut (dyn BusDevice + 'static)> {
        self.ext.get_mut(id.0).map(|d| &mut **d)
    }

    /// A new source driving ISA interrupt line `irq`, for an added device.
    pub fn irq_line(&self, irq: u8) -> IrqLine {
        self.irqs.line(irq)
    }

    /// The handle through which devices post exit, reset and A20 requests.
    pub fn requests(&self) -> Requests {
        self.requests.clone()
    }

    /// The state of every device as bytes (postcard): what the guest can observe of
    /// them — registers, counters, timers, FIFOs, interrupt line levels, the A20 gate
    /// and the devices' time — without host-side handles, statistics and host input
    /// not yet delivered. Two machines in the same state give the same bytes, and
    /// [`Platform::restore`] takes them back.
    pub fn state_bytes(&self) -> Vec<u8> {
        let ext: Vec<Vec<u8>> = self.ext.iter().map(|d| d.state()).collect();
        let lines: Vec<bool> = self.lines().iter().map(|l| l.is_asserted()).collect();
        let state = (
            self.now_ns,
            self.requests.a20(),
            lines,
            &self.pic,
            &self.pit,
            &self.cmos,
            &self.uarts,
            &self.post,
            &self.sysctl_a,
            &self.i8042,
            &self.pci,
            ext,
        );
        postcard::to_stdvec(&state).expect("device state serialises to memory")
    }

    /// The devices' interrupt lines, in the order [`Platform::state_bytes`] saves them.
    fn lines(&self) -> Vec<&IrqLine> {
        let mut v = vec![&self.pit.irq, &self.cmos.irq];
        v.extend(self.uarts.iter().map(|u| &u.irq));
        v.extend([&self.i8042.kbd_irq, &self.i8042.aux_irq]);
        v
    }

    /// Puts every device back in the state [`Platform::state_bytes`] gave (from a
    /// platform built the same way); the outputs, host input and handles stay. On an
    /// error nothing the guest can see may be trusted: the caller discards the machine.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        type Saved = (
            u64,
            bool,
            Vec<bool>,
            Pic,
            Pit,
            Cmos,
            [UartState; 4],
            PostCode,
            SystemControlA,
            I8042,
            (u32, Vec<(u8, Vec<u8>)>, ResetControl),
            Vec<Vec<u8>>,
        );
        let (now_ns, a20, lines, pic, pit, cmos, uarts, post, sysctl_a, i8042, pci, ext): Saved =
            postcard::from_bytes(bytes).map_err(|e| format!("device state: {e}"))?;
        if lines.len() != self.lines().len() || ext.len() != self.ext.len() {
            return Err("device state: another set of devices".into());
        }
        for (u, saved) in self.uarts.iter_mut().zip(&uarts) {
            u.restore(saved)?;
        }
        self.pci.restore(pci)?;
        for (d, saved) in self.ext.iter_mut().zip(&ext) {
            d.restore(saved)?;
        }
        self.pit.restore(pit);
        self.cmos.restore(cmos);
        self.i8042.restore(i8042);
        self.sysctl_a.restore(sysctl_a);
        self.post = post;
        for (l, &level) in self.lines().iter().zip(&lines) {
            l.set_level(level);
        }
        // The PIC's saved state already saw these levels.
        let _ = self.irqs.take_changes();
        self.pic = pic;
        self.requests.reset_a20(a20);
        let _ = self.requests.take();
        self.now_ns = now_ns;
        Ok(())
    }

    /// Takes the exit status, reset request and A20 change posted since the last call.
    pub fn take_requests(&mut self) -> PendingRequests {
        self.requests.take()
    }

    /// The current state of the A20 gate.
    pub fn a20_enabled(&self) -> bool {
        self.requests.a20()
    }

    /// Whether the guest masked NMIs (port 0x70 bit 7).
    pub fn nmi_masked(&self) -> bool {
        self.cmos.nmi_masked()
    }

    /// The virtual time devices have been advanced to.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Runs device timers up to `now_ns` (earlier times are ignored) and delivers their
    /// interrupts and any queued host input.
    pub fn advance_to(&mut self, now_ns: u64) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
            self.pit.advance_to(now_ns);
            self.cmos.advance_to(now_ns);
            for d in &mut self.ext {
                d.advance_to(now_ns);
            }
        }
        for u in &mut self.uarts {
            u.advance_to(now_ns);
        }
        self.i8042.advance_to(now_ns);
        self.sync_irqs();
    }

    /// When [`Platform::advance_to`] must next be called for a timer interrupt to be
    /// delivered on time; `None` when no timer is due. Timers whose interrupt line is
    /// masked at the PIC are skipped: their state is computed exactly whenever the guest
    /// looks.
    pub fn next_event_ns(&self) -> Option<u64> {
        self.next_timer(false)
    }

    /// When the next timer output changes, whether or not its line is masked at the
    /// PIC: a real-time clock must not run past it, since edges that come while the
    /// line is masked (as it is during the guest's handler of the previous one) are
    /// latched once.
    pub fn next_timer_ns(&self) -> Option<u64> {
        self.next_timer(true)
    }

    fn next_timer(&self, masked_too: bool) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if masked_too || !self.pic.is_masked(PIT_IRQ) {
            consider(self.pit.next_event_ns());
        }
        if masked_too || !self.pic.is_masked(RTC_IRQ) {
            consider(self.cmos.next_event_ns());
        }
        for d in &self.ext {
            consider(d.next_event_ns());
        }
        next
    }

    /// Hard reset: the PIC, PIT, UART registers, port 0x92, the i8042, the PCI host
    /// (CONFADD, 0xcf9, configuration spaces) and the RTC's interrupt enables return to
    /// their power-on state; CMOS RAM, the clock, queued host input and attached
    /// extension devices are kept, and A20 returns to its configured state (not reported
    /// as a change).
    pub fn reset(&mut self) {
        self.pic.reset();
        self.pit.reset();
        self.cmos.reset();
        for u in &mut self.uarts {
            u.reset();
        }
        self.sysctl_a.reset();
        self.i8042.reset();
        self.pci.reset();
        self.requests.reset_a20(self.a20_default);
        self.sync_irqs();
    }

    /// A handle for feeding host input to COM1-COM4 (`index` 0-3).
    pub fn serial_input(&self, index: usize) -> Option<SerialInput> {
        self.uarts.get(index).map(Uart::input)
    }

    /// A handle for feeding host key presses (scancode set 2) to the PS/2 keyboard.
    pub fn keyboard_input(&self) -> KeyboardInput {
        self.i8042.input()
    }

    /// The keyboard controller.
    pub fn i8042_mut(&mut self) -> &mut I8042 {
        &mut self.i8042
    }

    /// The PCI host (e.g. for firmware to add functions or set PIRQ routing).
    pub fn pci_mut(&mut self) -> &mut PciHost {
        &mut self.pci
    }

    /// The UART of COM1-COM4 (`index` 0-3).
    pub fn uart_mut(&mut self, index: usize) -> Option<&mut Uart> {
        self.uarts.get_mut(index)
    }

    /// The interrupt controller.
    pub fn pic(&self) -> &Pic {
        &self.pic
    }

    /// The CMOS/RTC (e.g. for firmware to fill configuration bytes).
    pub fn cmos_mut(&mut self) -> &mut Cmos {
        &mut self.cmos
    }

    /// The CMOS/RTC.
    pub fn cmos(&self) -> &Cmos {
        &self.cmos
    }

    /// The PIT.
    pub fn pit(&self) -> &Pit {
        &self.pit
    }

    /// The last POST code written to port 0x80.
    pub fn post_code(&self) -> u8 {
        self.post.last()
    }

    /// Moves interrupt-line changes into the PIC.
    #[inline]
    fn sync_irqs(&mut self) {
        let Some(changes) = self.irqs.take_changes() else {
            return;
        };
        for irq in 0..16u8 {
            let bit = 1u32 << irq;
            let level = changes.levels & bit != 0;
            if changes.pulses & bit != 0 {
                self.pic.set_irq(irq, false);
                self.pic.set_irq(irq, true);
            }
            self.pic.set_irq(irq, level);
        }
    }

    fn device(&mut self, slot: Slot) -> Option<&mut dyn BusDevice> {
        Some(match slot {
            Slot::Pic => &mut self.pic,
            Slot::Pit => &mut self.pit,
            Slot::Cmos => &mut self.cmos,
            Slot::Uart(i) => self.uarts.get_mut(i)?,
            Slot::DebugExit => &mut self.debug_exit,
            Slot::Post => &mut self.post,
            Slot::SysCtlA => &mut self.sysctl_a,
            Slot::I8042 => &mut self.i8042,
            Slot::Pci => &mut self.pci,
            Slot::Ext(i) => &mut **self.ext.get_mut(i)?,
        })
    }

    fn port_access(&mut self, port: Port, data: &mut [u8], write: bool) {
        let mut i = 0;
        let mut unclaimed = false;
        while i < data.len() {
            let addr = port.0 as u64 + i as u64;
            match self.ports.lookup(addr) {
                Some(m) => {
                    let len = (data.len() - i).min(m.remaining as usize);
                    let bytes = &mut data[i..i + len];
                    if let Some(dev) = self.device(m.target) {
                        if write {
                            dev.write(m.offset, bytes);
                        } else {
                            dev.read(m.offset, bytes);
                        }
                    }
                    i += len;
                }
                None => {
                    unclaimed = true;
                    i += 1;
                }
            }
        }
        if unclaimed {
            tracing::debug!(?port, size = data.len(), write, "unclaimed I/O port");
        }
        self.sync_irqs();
    }

    fn mmio_access(&mut self, addr: PhysAddr, data: &mut [u8], write: bool) {
        let mut i = 0;
        let mut unclaimed = false;
        while i < data.len() {
            let Some(a) = addr.0.checked_add(i as u64) else {
                unclaimed = true;
                break;
            };
            match self.mmio.lookup(PhysAddr(a)) {
                Some(m) => {
                    let len =
                        (data.len() - i).min(usize::try_from(m.remaining).unwrap_or(usize::MAX));
                    let bytes = &mut data[i..i + len];
                    if let Some(dev) = self.device(m.target) {
                        if write {
                            dev.write(m.offset, bytes);
                        } else {
                            dev.read(m.offset, bytes);
                        }
                    }
                    i += len;
                }
                None => {
                    unclaimed = true;
                    i += 1;
                }
            }
        }
        if unclaimed {
            tracing::debug!(?addr, size = data.len(), write, "unclaimed MMIO");
        }
        self.sync_irqs();
    }
}

impl IoBus for Platform {
    fn port_read(&mut self, port: Port, size: u8) -> u32 {
        let n = (size as usize).min(4);
        let mut buf = [0xff; 4];
        self.port_access(port, &mut buf[..n], false);
        u32::from_le_bytes(buf) & ones(n as u8) as u32
    }

    fn port_write(&mut self, port: Port, size: u8, value: u32) {
        let n = (size as usize).min(4);
        let mut buf = value.to_le_bytes();
        self.port_access(port, &mut buf[..n], true);
    }

    fn mmio_read(&mut self, addr: PhysAddr, size: u8) -> u64 {
        let n = (size as usize).min(8);
        let mut buf = [0xff; 8];
        self.mmio_access(addr, &mut buf[..n], false);
        u64::from_le_bytes(buf) & ones(n as u8)
    }

    fn mmio_write(&mut self, addr: PhysAddr, size: u8, value: u64) {
        let n = (size as usize).min(8);
        let mut buf = value.to_le_bytes();
        self.mmio_access(addr, &mut buf[..n], true);
    }

    #[inline]
    fn intr_pending(&self) -> bool {
        self.pic.intr_pending()
    }

    fn intr_ack(&mut self) -> u8 {
        self.pic.ack()
    }

    #[inline]
    fn stop_requested(&self) -> bool {
        self.requests.is_pending()
    }

    /// FERR# from the x87 (CR0.NE=0) raises IRQ13, as on the PC/AT.
    fn fpu_error(&mut self) {
        self.irqs.line(FERR_IRQ).pulse();
        self.sync_irqs();
    }
}

/// The interrupt line the PC wires the x87's FERR# to.
const FERR_IRQ: u8 = 13;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pit::ticks_to_ns;
    use crate::requests::ResetKind;
    use std::sync::{Arc, Mutex};

    #[test]
    fn state_bytes_follow_what_the_guest_can_observe() {
        let mut a = Platform::new(PlatformConfig::default()).unwrap();
        let b = Platform::new(PlatformConfig::default()).unwrap();
        assert_eq!(a.state_bytes(), b.state_bytes());
        let fresh = a.state_bytes();
        // Each device in turn: the PIC's mask, a CMOS RAM byte, the UART's scratch
        // register, port 0x92, the PCI address register, the PIT's counter.
        let writes: [(u16, u8, u32); 7] = [
            (0x21, 1, 0xfe),
            (0x70, 1, 0x40),
            (0x71, 1, 0x5a),
            (0x3ff, 1, 0x77),
            (0x92, 1, 0x02),
            (0xcf8, 4, 0x8000_0010),
            (0x40, 1, 0x12),
        ];
        let mut seen = vec![fresh];
        for (port, size, v) in writes {
            a.port_write(Port(port), size, v);
            let now = a.state_bytes();
            assert!(!seen.contains(&now), "a write to {port:#x} changed nothing");
            seen.push(now);
        }
        // Time alone moves the PIT and the RTC.
        let before = a.state_bytes();
        a.advance_to(1_500_000_000);
        assert_ne!(a.state_bytes(), before);
        // Another platform takes the state back: the same bytes, the same registers.
        let mut c = Platform::new(PlatformConfig::default()).unwrap();
        c.restore(&a.state_bytes()).unwrap();
        assert_eq!(c.state_bytes(), a.state_bytes());
        for port in [0x21u16, 0x3ff, 0x92] {
            assert_eq!(c.port_read(Port(port), 1), a.port_read(Port(port), 1));
        }
        a.port_write(Port(0x70), 1, 0x40);
        c.port_write(Port(0x70), 1, 0x40);
        assert_eq!(c.port_read(Port(0x71), 1), 0x5a, "CMOS RAM");
        assert_eq!(c.next_event_ns(), a.next_event_ns(), "the PIT's next tick");
        // Garbage, a truncated state and another set of devices are refused.
        assert!(c.restore(b"junk").is_err());
        let bytes = a.state_bytes();
        assert!(c.restore(&bytes[..bytes.len() / 2]).is_err());
        assert!(c.restore(&[]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Damaged device state (as a forged snapshot could hold) is refused or taken,
        /// and the devices then never panic, whatever the guest does with them.
        #[test]
        fn damaged_state_never_panics(
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..6),
        ) {
            let mut a = Platform::new(PlatformConfig::default()).unwrap();
            for (port, v) in [(0x43u16, 0x34u32), (0x40, 0x9c), (0x40, 0x2e), (0x21, 0xb8), (0x70, 0x0b)] {
                a.port_write(Port(port), 1, v);
            }
            a.advance_to(5_000_000);
            let mut bytes = a.state_bytes();
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            let mut c = Platform::new(PlatformConfig::default()).unwrap();
            if c.restore(&bytes).is_ok() {
                for port in [0x20u16, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x60, 0x64,
                             0x70, 0x71, 0x92, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0xcfc] {
                    let _ = c.port_read(Port(port), 1);
                    c.port_write(Port(port), 1, 0x5a);
                }
                for t in [6_000_000u64, 50_000_000, 2_000_000_000] {
                    c.advance_to(t);
                    let _ = c.next_event_ns();
                    if c.intr_pending() {
                        let _ = c.intr_ack();
                    }
                }
            }
        }
    }

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn platform() -> (Platform, SharedBuf) {
        let buf = SharedBuf::default();
        let p = Platform::new(PlatformConfig::default().with_com1(Box::new(buf.clone()))).unwrap();
        (p, buf)
    }

    fn outb(p: &mut Platform, port: u16, v: u8) {
        p.port_write(Port(port), 1, v as u32);
    }

    fn inb(p: &mut Platform, port: u16) -> u8 {
        p.port_read(Port(port), 1) as u8
    }

    /// Linux's PIC setup with IRQ0 and the cascade unmasked.
    fn init_pic(p: &mut Platform, master_mask: u8, slave_mask: u8) {
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x38),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, master_mask),
            (0xa1, slave_mask),
        ] {
            outb(p, port, v);
        }
    }

    #[test]
    fn com1_output_and_debug_exit() {
        let (mut p, buf) = platform();
        for &b in b"ok" {
            outb(&mut p, 0x3f8, b);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"ok");
        assert!(!p.stop_requested());
        p.port_write(Port(0xf4), 4, 0x31);
        assert!(p.stop_requested());
        let r = p.take_requests();
        assert_eq!(r.exit_status, Some(0x63));
        assert!(!p.stop_requested());
    }

    #[test]
    fn unclaimed_ports_read_all_ones() {
        let (mut p, _b) = platform();
        assert_eq!(p.port_read(Port(0x1234), 1), 0xff);
        assert_eq!(p.port_read(Port(0x1234), 2), 0xffff);
        assert_eq!(p.port_read(Port(0x1234), 4), 0xffff_ffff);
        assert_eq!(p.port_read(Port(0xffff), 4), 0xffff_ffff);
        p.port_write(Port(0x1234), 4, 0);
        assert_eq!(p.mmio_read(PhysAddr(0xfee0_0000), 8), u64::MAX);
        assert_eq!(p.mmio_read(PhysAddr(u64::MAX), 8), u64::MAX);
        p.mmio_write(PhysAddr(u64::MAX - 2), 8, 0);
        assert_eq!(p.port_read(Port(0x80), 0), 0);
    }

    #[test]
    fn wide_accesses_split_across_devices() {
        let (mut p, _b) = platform();
        outb(&mut p, 0x80, 0x5a);
        // 0x80 is POST, 0x81 is unclaimed.
        assert_eq!(p.port_read(Port(0x80), 2), 0xff5a);
        // A word write at 0x70 sets the CMOS index and writes the data port.
        p.port_write(Port(0x70), 2, 0x7740);
        outb(&mut p, 0x70, 0x40);
        assert_eq!(inb(&mut p, 0x71), 0x77);
        // Word read of the PIC master: IRR then IMR.
        init_pic(&mut p, 0xa5, 0xff);
        assert_eq!(p.port_read(Port(0x20), 2), 0xa500);
        // A dword write to port 0xf6 still exits (the window is 0xf4-0xf7).
        p.port_write(Port(0xf6), 1, 2);
        assert_eq!(p.take_requests().exit_status, Some(5));
    }

    #[test]
    fn pit_irq0_reaches_the_cpu() {
        let (mut p, _b) = platform();
        init_pic(&mut p, 0xfe, 0xff);
        // PIT ch0 mode 2, 1000 counts.
        outb(&mut p, 0x43, 0x34);
        outb(&mut p, 0x40, 0xe8);
        outb(&mut p, 0x40, 0x03);
        assert!(!p.intr_pending());
        let t = p.next_event_ns().unwrap();
        assert_eq!(t, ticks_to_ns(1 + 1000));
        p.advance_to(t - 1);
        assert!(!p.intr_pending());
        p.advance_to(t);
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x30);
        assert!(!p.intr_pending());
        outb(&mut p, 0x20, 0x20);
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(1 + 2000)));
        // Masking IRQ0 removes the timer from the schedule, but the edge is still
        // latched and delivered on unmask.
        outb(&mut p, 0x21, 0xff);
        assert_eq!(p.next_event_ns(), None);
        p.advance_to(ticks_to_ns(1 + 2500));
        assert!(!p.intr_pending());
        outb(&mut p, 0x21, 0xfe);
        assert!(p.intr_pending());
    }

    #[test]
    fn rtc_irq8_through_cascade() {
        let (mut p, _b) = platform();
        init_pic(&mut p, 0xfb, 0xfe);
        outb(&mut p, 0x70, 0x0b);
        outb(&mut p, 0x71, 0x42); // PIE, 24h
        let t = p.next_event_ns().unwrap();
        p.advance_to(t);
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x38);
        outb(&mut p, 0x70, 0x0c);
        assert_eq!(inb(&mut p, 0x71) & 0xc0, 0xc0);
        outb(&mut p, 0xa0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert!(!p.intr_pending());
        assert!(p.next_event_ns().unwrap() > t);
    }

    #[test]
    fn ferr_raises_irq13() {
        // PC/AT: the x87's FERR# drives IRQ13 (slave input 5).
        let (mut p, _b) = platform();
        init_pic(&mut p, 0xfb, 0xdf);
        assert!(!p.intr_pending());
        p.fpu_error();
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x3d);
    }

    #[test]
    fn serial_input_raises_irq4() {
        let (mut p, _b) = platform();
        init_pic(&mut p, 0xef, 0xff);
        outb(&mut p, 0x3f9, 0x01); // IER: received data
        let input = p.serial_input(0).unwrap();
        assert_eq!(input.push(b"hi"), 2);
        assert!(!p.intr_pending(), "input enters at the next time step");
        p.advance_to(1);
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x34);
        assert_eq!(inb(&mut p, 0x3fd) & 1, 1);
        assert_eq!(inb(&mut p, 0x3f8), b'h');
        assert_eq!(inb(&mut p, 0x3f8), b'i');
        // COM2 on IRQ3.
        outb(&mut p, 0x20, 0x20);
        outb(&mut p, 0x21, 0xf7);
        outb(&mut p, 0x2f9, 0x02); // IER: THR empty
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x33);
    }

    #[test]
    fn a20_and_resets() {
        let (mut p, _b) = platform();
        assert!(p.a20_enabled());
        assert_eq!(inb(&mut p, 0x92) & 2, 2);
        outb(&mut p, 0x92, 0x00);
        assert!(p.stop_requested());
        assert_eq!(p.take_requests().a20, Some(false));
        assert_eq!(inb(&mut p, 0x92) & 2, 0);
        outb(&mut p, 0x92, 0x01);
        assert_eq!(p.take_requests().reset, Some(ResetKind::Soft));
        outb(&mut p, 0xcf9, 0x06);
        assert_eq!(p.take_requests().reset, Some(ResetKind::Hard));
        p.reset();
        assert!(p.a20_enabled());
        assert_eq!(inb(&mut p, 0x92), 0x02);
        assert!(!p.stop_requested());
    }

    #[test]
    fn post_and_nmi_mask() {
        let (mut p, _b) = platform();
        outb(&mut p, 0x80, 0x42);
        assert_eq!(p.post_code(), 0x42);
        assert_eq!(inb(&mut p, 0x80), 0x42);
        outb(&mut p, 0x70, 0x8f);
        assert!(p.nmi_masked());
        outb(&mut p, 0x70, 0x0f);
        assert!(!p.nmi_masked());
    }

    #[test]
    fn cmos_memory_size_from_config() {
        let mut p = Platform::new(PlatformConfig::default().with_ram_size(4 << 30)).unwrap();
        // 4 GiB: 3.5 GiB below the hole, 512 MiB above 4 GiB (in 64 KiB units: 0x2000).
        outb(&mut p, 0x70, 0x5c);
        assert_eq!(inb(&mut p, 0x71), 0x20);
        outb(&mut p, 0x70, 0x35);
        assert_eq!(inb(&mut p, 0x71), 0xdf);
    }

    struct Counter {
        reads: u64,
        last_write: Vec<u8>,
        now: u64,
    }

    impl BusDevice for Counter {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads += 1;
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.last_write = data.to_vec();
        }
        fn advance_to(&mut self, now_ns: u64) {
            self.now = now_ns;
        }
        fn next_event_ns(&self) -> Option<u64> {
            Some(self.now + 1000)
        }
    }

    #[test]
    fn extension_devices() {
        let (mut p, _b) = platform();
        let dev = Counter {
            reads: 0,
            last_write: vec![],
            now: 0,
        };
        assert!(matches!(
            p.attach_port_device(
                Port(0x60),
                8,
                Box::new(Counter {
                    reads: 0,
                    last_write: vec![],
                    now: 0
                })
            ),
            Err(BusError::Overlap { .. })
        ));
        let id = p
            .attach_mmio_device(PhysAddr(0xfed0_0000), 0x400, Box::new(dev))
            .unwrap();
        assert_eq!(p.mmio_read(PhysAddr(0xfed0_0010), 4), 0x1312_1110);
        // Crossing the end of the window: the tail is unclaimed.
        assert_eq!(p.mmio_read(PhysAddr(0xfed0_03fe), 4), 0xffff_fffe);
        p.mmio_write(PhysAddr(0xfed0_0000), 8, 0x0102_0304_0506_0708);
        p.advance_to(5000);
        assert_eq!(p.next_event_ns(), Some(6000));
        let kb = p
            .attach_port_device(
                Port(0x300),
                1,
                Box::new(Counter {
                    reads: 0,
                    last_write: vec![],
                    now: 0,
                }),
            )
            .unwrap();
        p.map_ports(kb, Port(0x304), 1, 4).unwrap();
        assert_eq!(inb(&mut p, 0x304), 4);
        assert!(p.device_mut(id).is_some());
        assert!(p.device_mut(DeviceId(99)).is_none());
        // Taking over 0xcf8-0xcff needs the PCI host unmapped first.
        assert!(p
            .attach_port_device(
                Port(0xcf8),
                8,
                Box::new(Counter {
                    reads: 0,
                    last_write: vec![],
                    now: 0
                })
            )
            .is_err());
        assert!(p.unmap_ports(Port(0xcf9)).is_err());
        p.unmap_ports(Port(0xcf8)).unwrap();
        assert!(p
            .attach_port_device(
                Port(0xcf8),
                8,
                Box::new(Counter {
                    reads: 0,
                    last_write: vec![],
                    now: 0
                })
            )
            .is_ok());
        let l = p.irq_line(1);
        init_pic(&mut p, 0xfd, 0xff);
        l.pulse();
        p.advance_to(6000);
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x31);
    }

    fn inl(p: &mut Platform, port: u16) -> u32 {
        p.port_read(Port(port), 4)
    }

    fn outl(p: &mut Platform, port: u16, v: u32) {
        p.port_write(Port(port), 4, v);
    }

    /// Linux `__i8042_command` over the platform's ports.
    fn kbc_command(p: &mut Platform, cmd: u8, params: &[u8], replies: usize) -> Vec<u8> {
        outb(p, 0x64, cmd);
        for &b in params {
            assert_eq!(inb(p, 0x64) & 0x02, 0, "IBF clear before each parameter");
            outb(p, 0x60, b);
        }
        (0..replies)
            .map(|_| {
                assert_eq!(inb(p, 0x64) & 0x01, 0x01, "OBF for reply to {cmd:#x}");
                inb(p, 0x60)
            })
            .collect()
    }

    #[test]
    fn linux_i8042_probe_end_to_end() {
        // drivers/input/serio/i8042.c i8042_probe on a PIC with IRQ 1, 2 and 12 unmasked.
        let (mut p, _b) = platform();
        init_pic(&mut p, 0xf9, 0xef);
        // i8042_controller_check: flush finds nothing, status is not 0xff.
        assert_eq!(inb(&mut p, 0x64) & 0x01, 0);
        assert_eq!(kbc_command(&mut p, 0xaa, &[], 1), [0x55]);
        // i8042_controller_init.
        let ctr = kbc_command(&mut p, 0x20, &[], 1)[0];
        assert_eq!(kbc_command(&mut p, 0x20, &[], 1)[0], ctr);
        assert_ne!(inb(&mut p, 0x64) & 0x10, 0, "no keylock");
        let mut ctr = (ctr | 0x10) & !0x01;
        kbc_command(&mut p, 0x60, &[ctr], 0);
        // The replies so far went out with KBD_INT set: IRQ 1 edges were latched; the
        // driver's handler finds no data and returns.
        while p.intr_pending() {
            let _ = p.intr_ack();
            outb(&mut p, 0xa0, 0x20);
            outb(&mut p, 0x20, 0x20);
        }
        // i8042_check_aux.
        assert_eq!(kbc_command(&mut p, 0xd3, &[0x5a], 1), [0x5a]);
        kbc_command(&mut p, 0xa7, &[], 0);
        assert_ne!(kbc_command(&mut p, 0x20, &[], 1)[0] & 0x20, 0);
        kbc_command(&mut p, 0xa8, &[], 0);
        assert_eq!(kbc_command(&mut p, 0x20, &[], 1)[0] & 0x20, 0);
        ctr = (ctr | 0x20) & !0x02;
        kbc_command(&mut p, 0x60, &[ctr], 0);
        // AUX IRQ delivery test: enable the port and its interrupt, loop 0xa5 without
        // reading it back; IRQ 12 (vector 0x3c) must fire with AUXB set.
        kbc_command(&mut p, 0x60, &[(ctr & !0x20) | 0x02], 0);
        assert!(!p.intr_pending());
        kbc_command(&mut p, 0xd3, &[0xa5], 0);
        assert!(p.intr_pending());
        assert_eq!(p.intr_ack(), 0x3c);
        assert_eq!(inb(&mut p, 0x64) & 0x21, 0x21);
        assert_eq!(inb(&mut p, 0x60), 0xa5);
        outb(&mut p, 0xa0, 0x20);
        outb(&mut p, 0x20, 0x20);
        kbc_command(&mut p, 0x60, &[ctr], 0);
        // i8042_enable_kbd_port / aux port, then atkbd's probe through IRQ 1 (vector 0x31).
        ctr = (ctr & !0x30) | 0x03;
        kbc_command(&mut p, 0x60, &[ctr], 0);
        outb(&mut p, 0x60, 0xf2);
        let mut got = Vec::new();
        while p.intr_pending() {
            assert_eq!(p.intr_ack(), 0x31);
            got.push(inb(&mut p, 0x60));
            outb(&mut p, 0x20, 0x20);
        }
        assert_eq!(got, [0xfa, 0xab, 0x41]);
        // psmouse's GETID on the empty AUX port: 0xfe with timeout, on IRQ 12.
        kbc_command(&mut p, 0xd4, &[0xf2], 0);
        assert_eq!(p.intr_ack(), 0x3c);
        assert_eq!(inb(&mut p, 0x64) & 0x61, 0x61);
        assert_eq!(inb(&mut p, 0x60), 0xfe);
        outb(&mut p, 0xa0, 0x20);
        outb(&mut p, 0x20, 0x20);
        // A host key press reaches the guest at the next time step as set 1.
        let keys = p.keyboard_input();
        keys.push(&[0x1c, 0xf0, 0x1c]);
        assert!(!p.intr_pending());
        p.advance_to(1);
        let mut got = Vec::new();
        while p.intr_pending() {
            assert_eq!(p.intr_ack(), 0x31);
            got.push(inb(&mut p, 0x60));
            outb(&mut p, 0x20, 0x20);
        }
        assert_eq!(got, [0x1e, 0x9e]);
        // The keyboard controller's reset pulse, and port 0x61 still belongs to the PIT.
        outb(&mut p, 0x64, 0xfe);
        assert_eq!(p.take_requests().reset, Some(ResetKind::Soft));
        outb(&mut p, 0x61, 0x01);
        assert_eq!(inb(&mut p, 0x61) & 0x01, 0x01);
    }

    #[test]
    fn linux_pci_conf1_probe_end_to_end() {
        // arch/x86/pci/direct.c pci_check_type1 + pci_sanity_check, then a bus 0 scan.
        let (mut p, _b) = platform();
        outb(&mut p, 0xcfb, 0x01);
        let tmp = inl(&mut p, 0xcf8);
        outl(&mut p, 0xcf8, 0x8000_0000);
        assert_eq!(inl(&mut p, 0xcf8), 0x8000_0000);
        assert!(
            !p.stop_requested(),
            "the dword at 0xcf8 does not touch 0xcf9"
        );
        outl(&mut p, 0xcf8, 0x8000_0008);
        assert_eq!(p.port_read(Port(0xcfe), 2), 0x0600);
        outl(&mut p, 0xcf8, tmp);
        let mut found = Vec::new();
        for devfn in 0..256u32 {
            outl(&mut p, 0xcf8, 0x8000_0000 | devfn << 8);
            let id = inl(&mut p, 0xcfc);
            if id != 0xffff_ffff {
                found.push((devfn, id, inl(&mut p, 0xcf8)));
            }
        }
        assert_eq!(
            found,
            [(0, 0x1237_8086, 0x8000_0000), (8, 0x7000_8086, 0x8000_0800)]
        );
        outl(&mut p, 0xcf8, 0x8000_080c);
        assert_eq!(p.port_read(Port(0xcfe), 1), 0x80, "multi-function header");
        // PIRQ route writes through a byte at 0xcfc + (reg & 3).
        outl(&mut p, 0xcf8, 0x8000_0860);
        outb(&mut p, 0xcfd, 0x0b);
        assert_eq!(inl(&mut p, 0xcfc), 0x8080_0b80);
        // Byte 0xcf9 is still the reset control register.
        outb(&mut p, 0xcf9, 0x06);
        assert_eq!(p.take_requests().reset, Some(ResetKind::Hard));
        p.reset();
        assert_eq!(inl(&mut p, 0xcf8), 0);
        outl(&mut p, 0xcf8, 0x8000_0860);
        assert_eq!(inl(&mut p, 0xcfc), 0x8080_8080);
    }

    #[test]
    fn platform_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Platform>();
    }

    /// Runs a fixed guest-like script against a fresh platform and records every value
    /// the guest could observe.
    fn script() -> Vec<u32> {
        let (mut p, _b) = platform();
        init_pic(&mut p, 0xfa, 0xfe);
        outb(&mut p, 0x43, 0x36); // ch0 mode 3, 100 Hz
        outb(&mut p, 0x40, 0x9c);
        outb(&mut p, 0x40, 0x2e);
        outb(&mut p, 0x70, 0x0b);
        outb(&mut p, 0x71, 0x52); // PIE + UIE
        let mut seen = Vec::new();
        let mut now = 0u64;
        for step in 0..2000u64 {
            now += 37_331 + step % 13;
            if let Some(t) = p.next_event_ns() {
                now = now.min(t);
            }
            p.advance_to(now);
            while p.intr_pending() {
                let v = p.intr_ack();
                seen.push(v as u32);
                if v == 0x38 {
                    outb(&mut p, 0x70, 0x0c);
                    seen.push(inb(&mut p, 0x71) as u32);
                    outb(&mut p, 0xa0, 0x20);
                }
                outb(&mut p, 0x20, 0x20);
            }
            outb(&mut p, 0x43, 0x00);
            seen.push(p.port_read(Port(0x40), 1) | p.port_read(Port(0x40), 1) << 8);
            seen.push(inb(&mut p, 0x61) as u32);
            outb(&mut p, 0x70, 0x0a);
            seen.push(inb(&mut p, 0x71) as u32);
        }
        seen
    }

    #[test]
    fn same_script_same_observations() {
        let a = script();
        assert_eq!(a, script());
        // The script did see both timers.
        assert!(a.contains(&0x30) && a.contains(&0x38));
    }

    #[test]
    fn every_port_every_size_is_safe() {
        let (mut p, _b) = platform();
        for port in 0..=0xffffu16 {
            for size in [1u8, 2, 4] {
                let _ = p.port_read(Port(port), size);
            }
        }
        for port in (0..0x100u16)
            .chain(0x2e0..0x400)
            .chain(0x4d0..0x4d2)
            .chain(0xcf8..0xd00)
        {
            for size in [1u8, 2, 4, 3, 9] {
                for v in [0u32, 0xffff_ffff, 0x0102_0311] {
                    p.port_write(Port(port), size, v);
                    let _ = p.port_read(Port(port), size);
                    let _ = p.intr_ack();
                }
            }
        }
        p.advance_to(u64::MAX);
        let _ = p.next_event_ns();
    }
}
