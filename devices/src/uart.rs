//! A 16550A UART, wrapping `vm_superio::Serial`.
//!
//! Output goes to any `Write + Send` sink (host stdout, a file, `io::sink()`). Input comes
//! from the host through [`Uart::enqueue_raw_bytes`] or, from another thread, through a
//! [`SerialInput`] handle whose bounded queue feeds the 64-byte receive FIFO at defined
//! points only, so that when input reaches the guest depends on nothing but the guest:
//! at a [`BusDevice::advance_to`] that finds the FIFO empty (the queue's first bytes,
//! raising the receive interrupt), and as the guest reads the receive buffer, the
//! interrupt identification or the line status (the FIFO is topped up first, so it
//! never runs dry while bytes wait). Where slices end (an advance) then changes
//! nothing: a FIFO that is not empty is not refilled there. A machine that moves input
//! into the queue at a defined instruction count (record, replay, the debugger's
//! history) advances right after, so that the first bytes enter then.
//!
//! vm-superio signals interrupts as events; the UART turns each into a pulse on its
//! [`IrqLine`], gated by MCR OUT2 as on the PC (where OUT2 enables the IRQ driver).

use crate::host_input::{HostInput, HOST_INPUT_CAPACITY};
use std::cell::Cell;
use std::io::{self, Write};

use ox86_mmu::Port;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::irq::IrqLine;

/// COM1 base port.
pub const COM1: Port = Port(0x3f8);
/// COM2 base port.
pub const COM2: Port = Port(0x2f8);
/// COM3 base port.
pub const COM3: Port = Port(0x3e8);
/// COM4 base port.
pub const COM4: Port = Port(0x2e8);
/// Base ports of COM1-COM4.
pub const COM_PORTS: [Port; 4] = [COM1, COM2, COM3, COM4];
/// ISA IRQs of COM1-COM4 (COM3 shares IRQ 4 with COM1, COM4 IRQ 3 with COM2).
pub const COM_IRQS: [u8; 4] = [4, 3, 4, 3];
/// Number of registers (ports) of a UART.
pub const UART_PORTS_LEN: u16 = 8;
/// Capacity of the host input queue of a [`SerialInput`]; bytes beyond it are refused.
pub const INPUT_QUEUE_CAPACITY: usize = HOST_INPUT_CAPACITY;

const RBR: u64 = 0;
const IIR: u64 = 2;
const LSR: u64 = 5;
const MCR: u8 = 4;
const MCR_OUT2: u8 = 0x08;
/// The 16550A's receive FIFO (vm-superio's).
const FIFO_SIZE: usize = 64;

/// vm-superio's interrupt trigger: records that an interrupt event happened.
#[derive(Debug, Default)]
struct EventFlag(Cell<bool>);

impl Trigger for EventFlag {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(true);
        Ok(())
    }
}

/// A cloneable, thread-safe handle for feeding host input to a UART.
pub type SerialInput = HostInput;

/// A 16550A UART.
pub struct Uart {
    serial: Serial<EventFlag, NoEvents, Box<dyn Write + Send>>,
    pub(crate) irq: IrqLine,
    input: SerialInput,
    lost_bytes: u64,
}

impl std::fmt::Debug for Uart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart")
            .field("irq", &self.irq)
            .field("input_queued", &self.input.len())
            .field("lost_bytes", &self.lost_bytes)
            .finish_non_exhaustive()
    }
}

/// What a snapshot keeps of a UART: the 16550's registers (divisor latch low and high,
/// IER, IIR, LCR, LSR, MCR, MSR, scratch) and its receive FIFO; not the host's input
/// not yet delivered, nor the host-side count of lost bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartState {
    regs: [u8; 9],
    fifo: Vec<u8>,
}

impl serde::Serialize for Uart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.save().serialize(s)
    }
}

impl Uart {
    /// A UART writing the guest's output to `out` and pulsing `irq` on interrupts.
    pub fn new(out: Box<dyn Write + Send>, irq: IrqLine) -> Self {
        Uart {
            serial: Serial::new(EventFlag::default(), out),
            irq,
            input: SerialInput::default(),
            lost_bytes: 0,
        }
    }

    /// The UART's state, for a snapshot.
    pub fn save(&self) -> UartState {
        let st = self.serial.state();
        UartState {
            regs: [
                st.baud_divisor_low,
                st.baud_divisor_high,
                st.interrupt_enable,
                st.interrupt_identification,
                st.line_control,
                st.line_status,
                st.modem_control,
                st.modem_status,
                st.scratch,
            ],
            fifo: st.in_buffer,
        }
    }

    /// Puts the UART back in state `saved` (its output and interrupt line stay).
    pub fn restore(&mut self, saved: &UartState) -> Result<(), String> {
        let [dll, dlh, ier, iir, lcr, lsr, mcr, msr, scr] = saved.regs;
        let state = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: saved.fifo.clone(),
        };
        let old = std::mem::replace(
            &mut self.serial,
            Serial::new(EventFlag::default(), Box::new(io::sink())),
        );
        let out = old.into_writer();
        self.serial = Serial::from_state(&state, EventFlag::default(), NoEvents, out)
            .map_err(|e| format!("UART state: {e:?}"))?;
        Ok(())
    }

    /// Puts bytes from the host into the receive FIFO now; returns how many fit (the FIFO
    /// holds 64 bytes; in loopback mode nothing is accepted).
    pub fn enqueue_raw_bytes(&mut self, bytes: &[u8]) -> usize {
        let n = self.serial.enqueue_raw_bytes(bytes).unwrap_or_default();
        self.deliver_irq();
        n
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// A handle for queueing host input from any thread.
    pub fn input(&self) -> SerialInput {
        self.input.clone()
    }

    /// Output bytes that the sink failed to take.
    pub fn lost_bytes(&self) -> u64 {
        self.lost_bytes
    }

    /// Back to the power-on register state; output sink and queued input are kept.
    pub fn reset(&mut self) {
        let serial = std::mem::replace(
            &mut self.serial,
            Serial::new(EventFlag::default(), Box::new(io::sink())),
        );
        self.serial = Serial::new(EventFlag::default(), serial.into_writer());
    }

    /// Moves queued host input into the FIFO as far as it has room.
    fn drain_input(&mut self) {
        let chunk = self.input.take(self.serial.fifo_capacity());
        if chunk.is_empty() {
            return;
        }
        let _ = self.serial.enqueue_raw_bytes(&chunk);
        self.deliver_irq();
    }

    /// Turns a vm-superio interrupt event into an IRQ pulse if OUT2 enables the driver.
    fn deliver_irq(&mut self) {
        if self.serial.interrupt_evt().0.take() && self.serial.read(MCR) & MCR_OUT2 != 0 {
            self.irq.pulse();
        }
    }

    fn write_reg(&mut self, offset: u8, v: u8) {
        if let Err(e) = self.serial.write(offset, v) {
            if self.lost_bytes == 0 {
                tracing::warn!(error = %e, "serial output failed; dropping bytes");
            }
            self.lost_bytes += 1;
        }
    }
}

impl BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |o| {
            if o < UART_PORTS_LEN as u64 {
                // RBR, IIR, LSR: what waits is in the FIFO first (see the module).
                if matches!(o, RBR | IIR | LSR) && !self.input.is_empty() {
                    self.drain_input();
                }
                self.serial.read(o as u8)
            } else {
                0xff
            }
        });
        self.deliver_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| {
            if o < UART_PORTS_LEN as u64 {
                self.write_reg(o as u8, v);
            }
        });
        self.deliver_irq();
    }

    fn advance_to(&mut self, _now_ns: u64) {
        // Only into an empty FIFO (see the module).
        if self.serial.fifo_capacity() == FIFO_SIZE {
            self.drain_input();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLines;
    use std::sync::{Arc, Mutex};

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

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR_PORT: u64 = 5;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    fn uart() -> (Uart, SharedBuf, IrqLines) {
        let lines = IrqLines::new();
        let buf = SharedBuf::default();
        (Uart::new(Box::new(buf.clone()), lines.line(4)), buf, lines)
    }

    fn inb(u: &mut Uart, off: u64) -> u8 {
        let mut b = [0];
        u.read(off, &mut b);
        b[0]
    }

    fn pulses(lines: &IrqLines) -> u32 {
        lines.take_changes().map_or(0, |c| c.pulses)
    }

    #[test]
    fn transmits_to_sink() {
        let (mut u, buf, _l) = uart();
        for &b in b"hello\n" {
            // 16550: LSR bit 5 (THRE) set means the transmitter can take a byte.
            assert_eq!(inb(&mut u, LSR) & 0x20, 0x20);
            u.write(THR, &[b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut u, buf, _l) = uart();
        // LCR bit 7 (DLAB) maps offsets 0/1 to the divisor latch.
        u.write(LCR, &[0x80]);
        u.write(0, &[0x01]);
        u.write(1, &[0x00]);
        assert_eq!(inb(&mut u, 0), 0x01);
        u.write(LCR, &[0x03]);
        assert!(
            buf.0.lock().unwrap().is_empty(),
            "divisor write is not output"
        );
        u.write(SCR, &[0x5a]);
        assert_eq!(inb(&mut u, SCR), 0x5a);
        // 16550A FIFOs reported in IIR bits 7-6.
        assert_eq!(inb(&mut u, IIR) & 0xc0, 0xc0);
    }

    #[test]
    fn receive_raises_irq_and_sets_data_ready() {
        let (mut u, _b, lines) = uart();
        u.write(IER, &[0x01]); // ERBFI
        pulses(&lines);
        assert_eq!(u.enqueue_raw_bytes(b"ab"), 2);
        assert_eq!(pulses(&lines), 1 << 4);
        // LSR bit 0 (DR) while data is in the FIFO; IIR 0x04 = received data available.
        assert_eq!(inb(&mut u, LSR) & 1, 1);
        assert_eq!(inb(&mut u, IIR) & 0x0f, 0x04);
        assert_eq!(inb(&mut u, THR), b'a');
        assert_eq!(inb(&mut u, THR), b'b');
        assert_eq!(inb(&mut u, LSR) & 1, 0);
    }

    #[test]
    fn out2_gates_the_irq() {
        let (mut u, _b, lines) = uart();
        u.write(4, &[0x00]); // MCR: OUT2 off
        u.write(IER, &[0x01]);
        u.enqueue_raw_bytes(b"x");
        assert_eq!(pulses(&lines), 0);
        let _ = inb(&mut u, THR);
        u.write(4, &[MCR_OUT2]);
        u.enqueue_raw_bytes(b"y");
        assert_eq!(pulses(&lines), 1 << 4);
    }

    #[test]
    fn thre_interrupt_on_enable_and_after_write() {
        let (mut u, _b, lines) = uart();
        pulses(&lines);
        u.write(IER, &[0x02]); // ETBEI
        assert_eq!(pulses(&lines), 1 << 4);
        assert_eq!(inb(&mut u, IIR) & 0x0f, 0x02);
        u.write(THR, b"z");
        assert_eq!(pulses(&lines), 1 << 4);
    }

    #[test]
    fn host_input_queue_is_bounded_and_drained_on_advance() {
        let (mut u, _b, lines) = uart();
        u.write(IER, &[0x01]);
        pulses(&lines);
        let input = u.input();
        let big = vec![b'q'; INPUT_QUEUE_CAPACITY + 100];
        assert_eq!(input.push(&big), INPUT_QUEUE_CAPACITY);
        assert_eq!(input.push(b"more"), 0);
        u.advance_to(1);
        assert_eq!(pulses(&lines), 1 << 4);
        assert_eq!(u.fifo_capacity(), 0, "FIFO filled to 64 bytes");
        assert_eq!(input.len(), INPUT_QUEUE_CAPACITY - 64);
        assert_eq!(u.enqueue_raw_bytes(&big), 0, "FIFO full");
        // Reads keep the FIFO topped up from the queue; advances into a FIFO that is
        // not empty move nothing (where slices end must not matter).
        for _ in 0..64 {
            assert_eq!(inb(&mut u, THR), b'q');
        }
        assert_eq!(input.len(), INPUT_QUEUE_CAPACITY - 127);
        u.advance_to(2);
        assert_eq!(
            input.len(),
            INPUT_QUEUE_CAPACITY - 127,
            "not refilled at an advance"
        );
        let mut n = 0;
        while inb(&mut u, LSR_PORT) & 1 != 0 {
            assert_eq!(inb(&mut u, THR), b'q');
            n += 1;
        }
        assert_eq!(n, INPUT_QUEUE_CAPACITY - 64, "the rest, read in order");
        assert!(input.is_empty());
        // New input into the empty FIFO enters at the next advance.
        input.push(b"xy");
        assert_eq!(inb(&mut u, LSR_PORT) & 1, 1, "seen at a line status read");
        assert_eq!(inb(&mut u, THR), b'x');
        input.push(b"z");
        u.advance_to(3);
        assert_eq!(input.len(), 1, "the FIFO holds y: not refilled");
        assert_eq!(inb(&mut u, THR), b'y');
        assert_eq!(inb(&mut u, THR), b'z');
    }

    #[test]
    fn broken_sink_counts_lost_bytes() {
        let mut u = Uart::new(Box::new(Broken), IrqLine::disconnected());
        for &b in b"abc" {
            u.write(THR, &[b]);
        }
        assert_eq!(u.lost_bytes(), 3);
    }

    #[test]
    fn reset_keeps_sink() {
        let (mut u, buf, _l) = uart();
        u.write(SCR, &[0x11]);
        u.reset();
        assert_eq!(inb(&mut u, SCR), 0);
        u.write(THR, b"k");
        assert_eq!(&*buf.0.lock().unwrap(), b"k");
    }

    #[test]
    fn any_access_is_safe() {
        let (mut u, _b, _l) = uart();
        for off in 0..12u64 {
            for v in [0u8, 0x80, 0xff, 0x10, 0x1f] {
                u.write(off, &[v, v]);
                let mut b = [0; 4];
                u.read(off, &mut b);
            }
        }
    }
}
