//! The 8042 keyboard controller (ports 0x60/0x64) with a PS/2 keyboard.
//!
//! Implemented from the IBM PS/2 Hardware Interface Technical Reference ("Keyboard/
//! Auxiliary Device Controller" and "Keyboard" chapters) and the Intel 8042/AMI KBC
//! command sets as PC chipsets implement them:
//!
//! - Port 0x64 read: the status register (OBF, IBF, SYS, A2, INH, AUXB, timeout, parity).
//!   Port 0x64 write: a controller command. Port 0x60 read: the output buffer. Port 0x60
//!   write: the parameter of the last controller command that takes one, else a byte for
//!   the keyboard.
//! - The command byte (controller RAM byte 0, read with 0x20, written with 0x60): interrupt
//!   enables for the keyboard (IRQ 1) and auxiliary (IRQ 12) ports, the system flag,
//!   interface disables and the set-2-to-set-1 translation.
//! - The output port (0xD0/0xD1): bit 0 is the CPU reset line (0 = reset), bit 1 the A20
//!   gate; both go to the machine through [`Requests`]. 0xFE pulses bit 0 (a CPU reset, as
//!   PIIX-era chipsets turn the KBC's RC# into INIT: [`ResetKind::Soft`]).
//!
//! The auxiliary port exists (loopback with 0xD3, interface test 0xA9, enable/disable
//! 0xA8/0xA7, IRQ 12) but no mouse is plugged in: bytes sent to it with 0xD4 are answered
//! by the controller with 0xFE and the timeout bit, as a KBC does when the device does not
//! clock. Linux's i8042 driver finds the port, passes its loopback and IRQ tests, and
//! psmouse's probe then fails quietly.
//!
//! The keyboard is an MF2 keyboard (ID 0xAB 0x83) in scancode set 2. Host key presses
//! (set-2 bytes) enter through [`I8042::inject_key_bytes`] or a [`KeyboardInput`] handle;
//! with translation on (the default, as a BIOS leaves it) the controller hands the guest
//! set-1 codes.
//!
//! Data moves without delay: a response is in the output buffer when the write that caused
//! it returns, and reading port 0x60 loads the next waiting byte at once. Each byte loaded
//! with its interrupt enabled is a new edge on IRQ 1 or 12 (the PC's lines are edge
//! triggered), and the line stays high while the byte waits. The input buffer is never
//! full (IBF reads 0). All queues are bounded.

use crate::host_input::{HostInput, HOST_INPUT_CAPACITY};
use std::collections::VecDeque;

use ox86_mmu::Port;

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::irq::IrqLine;
use crate::requests::{Requests, ResetKind};

/// The data port.
pub const I8042_DATA_PORT: Port = Port(0x60);
/// The status (read) / command (write) port.
pub const I8042_COMMAND_PORT: Port = Port(0x64);
/// Device offset of the data port.
pub const OFFSET_DATA: u64 = 0;
/// Device offset of the status/command port (the platform maps port 0x64 here).
pub const OFFSET_COMMAND: u64 = 4;
/// The keyboard's ISA interrupt line.
pub const KBD_IRQ: u8 = 1;
/// The auxiliary (mouse) port's ISA interrupt line.
pub const AUX_IRQ: u8 = 12;
/// Capacity of the host key queue of a [`KeyboardInput`]; bytes beyond it are refused.
pub const KEY_QUEUE_CAPACITY: usize = HOST_INPUT_CAPACITY;
/// The keyboard's own output buffer (PS/2 keyboards buffer 16 bytes).
pub const KBD_BUFFER_LEN: usize = 16;
/// Bytes the controller itself can have waiting for the output buffer.
const CTRL_QUEUE_LEN: usize = 16;

/// Status register bits (port 0x64 read).
pub mod status {
    /// Output buffer full: a byte waits at port 0x60.
    pub const OBF: u8 = 0x01;
    /// Input buffer full: the controller has not taken the last write yet.
    pub const IBF: u8 = 0x02;
    /// System flag: command byte bit 2 (set once the self-test passed).
    pub const SYS: u8 = 0x04;
    /// A2: the last write went to port 0x64 (a command) rather than 0x60.
    pub const A2: u8 = 0x08;
    /// Inhibit switch: 1 = keyboard not inhibited (keylock off).
    pub const INH: u8 = 0x10;
    /// The byte in the output buffer came from the auxiliary port.
    pub const AUXB: u8 = 0x20;
    /// General timeout: the device did not answer.
    pub const TIMEOUT: u8 = 0x40;
    /// Parity error on the last byte received.
    pub const PARITY: u8 = 0x80;
}

/// Command byte bits (controller RAM byte 0).
pub mod ctr {
    /// Raise IRQ 1 when a keyboard byte is in the output buffer.
    pub const KBD_INT: u8 = 0x01;
    /// Raise IRQ 12 when an auxiliary byte is in the output buffer.
    pub const AUX_INT: u8 = 0x02;
    /// System flag (mirrored in status bit 2).
    pub const SYS: u8 = 0x04;
    /// Ignore the keylock switch.
    pub const IGN_KEYLOCK: u8 = 0x08;
    /// Keyboard interface disabled (clock held low).
    pub const KBD_DIS: u8 = 0x10;
    /// Auxiliary interface disabled.
    pub const AUX_DIS: u8 = 0x20;
    /// Translate keyboard bytes from scancode set 2 to set 1.
    pub const XLATE: u8 = 0x40;
}

/// The command byte a BIOS leaves behind: keyboard interrupt on, translation on, system
/// flag set, auxiliary port disabled.
pub const DEFAULT_CTR: u8 = ctr::XLATE | ctr::AUX_DIS | ctr::SYS | ctr::KBD_INT;

/// Controller commands (port 0x64 write).
mod cmd {
    pub const READ_RAM: u8 = 0x20; // 0x20-0x3f
    pub const WRITE_RAM: u8 = 0x60; // 0x60-0x7f
    pub const PASSWORD_INSTALLED: u8 = 0xa4;
    pub const AUX_DISABLE: u8 = 0xa7;
    pub const AUX_ENABLE: u8 = 0xa8;
    pub const AUX_TEST: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const KBD_TEST: u8 = 0xab;
    pub const KBD_DISABLE: u8 = 0xad;
    pub const KBD_ENABLE: u8 = 0xae;
    pub const READ_INPUT_PORT: u8 = 0xc0;
    pub const READ_OUTPUT_PORT: u8 = 0xd0;
    pub const WRITE_OUTPUT_PORT: u8 = 0xd1;
    pub const WRITE_KBD_OBUF: u8 = 0xd2;
    pub const WRITE_AUX_OBUF: u8 = 0xd3;
    pub const WRITE_AUX: u8 = 0xd4;
    pub const A20_DISABLE: u8 = 0xdd;
    pub const A20_ENABLE: u8 = 0xdf;
    pub const READ_TEST_INPUTS: u8 = 0xe0;
    pub const PULSE: u8 = 0xf0; // 0xf0-0xff
}

/// Keyboard commands and replies.
mod kbd {
    pub const SET_LEDS: u8 = 0xed;
    pub const ECHO: u8 = 0xee;
    pub const SCANCODE_SET: u8 = 0xf0;
    pub const GET_ID: u8 = 0xf2;
    pub const TYPEMATIC: u8 = 0xf3;
    pub const ENABLE: u8 = 0xf4;
    pub const DISABLE: u8 = 0xf5;
    pub const SET_DEFAULT: u8 = 0xf6;
    pub const RESEND: u8 = 0xfe;
    pub const RESET: u8 = 0xff;
    pub const ACK: u8 = 0xfa;
    pub const BAT_OK: u8 = 0xaa;
    pub const ID: [u8; 2] = [0xab, 0x83];
    pub const DEFAULT_TYPEMATIC: u8 = 0x2b;
    /// Set-2 break prefix.
    pub const BREAK: u8 = 0xf0;
}

/// Test replies and input/output port values.
const TEST_OK: u8 = 0x00;
const SELF_TEST_OK: u8 = 0x55;
const NO_PASSWORD: u8 = 0xf1;
/// Input port: keyboard not inhibited (bit 7), no manufacturing jumper (bit 5).
const INPUT_PORT: u8 = 0xa0;
const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;
/// Output port bits 2-3 and 6-7 (keyboard clock/data idle high).
const OUT_ONES: u8 = 0xcc;
const OUT_KBD_OBF: u8 = 0x10;
const OUT_AUX_OBF: u8 = 0x20;

/// The 8042's set-2 to set-1 translation for codes 0x00-0x7f; 0x83 and 0x84 translate to
/// 0x41 and 0x54, every other code passes unchanged.
const XLATE_LOW: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
];

/// Translates one set-2 code to set 1 (without break handling).
pub fn translate_set2_to_set1(code: u8) -> u8 {
    match code {
        0x00..=0x7f => XLATE_LOW[code as usize],
        0x83 => 0x41,
        0x84 => 0x54,
        _ => code,
    }
}

/// Set-2 to set-1 translation of a byte stream: a 0xF0 break prefix is swallowed and sets
/// bit 7 of the next translated code.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Translator {
    brk: bool,
}

impl Translator {
    fn feed(&mut self, b: u8) -> Option<u8> {
        if b == kbd::BREAK {
            self.brk = true;
            return None;
        }
        let t = translate_set2_to_set1(b);
        Some(if std::mem::take(&mut self.brk) {
            t | 0x80
        } else {
            t
        })
    }
}

/// A cloneable, thread-safe handle for feeding host key presses (scancode set 2 bytes)
/// to the keyboard; they reach it at the next [`BusDevice::advance_to`].
pub type KeyboardInput = HostInput;

/// The PS/2 keyboard behind the controller's first port.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Keyboard {
    /// Bytes waiting to be clocked to the controller.
    out: VecDeque<u8>,
    /// Scanning enabled (0xF4) or disabled (0xF5).
    scanning: bool,
    /// Scancode set 1-3.
    set: u8,
    leds: u8,
    typematic: u8,
    /// A command waiting for its parameter byte.
    pending: Option<u8>,
    /// The last byte sent, for 0xFE (resend).
    last_sent: u8,
    /// Set-1 conversion of host set-2 input when set 1 is selected.
    set1: Translator,
}

impl Keyboard {
    fn new() -> Self {
        Keyboard {
            out: VecDeque::with_capacity(KBD_BUFFER_LEN),
            scanning: true,
            set: 2,
            leds: 0,
            typematic: kbd::DEFAULT_TYPEMATIC,
            pending: None,
            last_sent: 0,
            set1: Translator::default(),
        }
    }

    fn defaults(&mut self) {
        self.set = 2;
        self.leds = 0;
        self.typematic = kbd::DEFAULT_TYPEMATIC;
        self.set1 = Translator::default();
    }

    fn send(&mut self, b: u8) -> bool {
        if self.out.len() >= KBD_BUFFER_LEN {
            return false;
        }
        self.out.push_back(b);
        self.last_sent = b;
        true
    }

    /// A byte from the host (port 0x60 write).
    fn command(&mut self, b: u8) {
        if let Some(c) = self.pending.take() {
            // A command byte while a parameter is expected starts a new command.
            if b < kbd::SET_LEDS {
                self.parameter(c, b);
                return;
            }
        }
        match b {
            kbd::SET_LEDS | kbd::TYPEMATIC | kbd::SCANCODE_SET => {
                self.send(kbd::ACK);
                self.pending = Some(b);
            }
            kbd::ECHO => {
                self.send(kbd::ECHO);
            }
            kbd::GET_ID => {
                for r in [kbd::ACK, kbd::ID[0], kbd::ID[1]] {
                    self.send(r);
                }
            }
            kbd::ENABLE => {
                self.out.clear();
                self.scanning = true;
                self.send(kbd::ACK);
            }
            kbd::DISABLE | kbd::SET_DEFAULT => {
                self.out.clear();
                self.defaults();
                self.scanning = b == kbd::SET_DEFAULT;
                self.send(kbd::ACK);
            }
            // Set-3 key-type commands: accepted and ignored.
            0xf7..=0xfd => {
                self.send(kbd::ACK);
            }
            kbd::RESEND => {
                let last = self.last_sent;
                self.send(last);
            }
            kbd::RESET => {
                self.out.clear();
                self.defaults();
                self.scanning = true;
                self.send(kbd::ACK);
                self.send(kbd::BAT_OK);
            }
            _ => {
                tracing::debug!(byte = b, "keyboard: unknown command");
                self.send(kbd::RESEND);
            }
        }
    }

    fn parameter(&mut self, c: u8, b: u8) {
        match c {
            kbd::SET_LEDS => {
                self.leds = b & 7;
                self.send(kbd::ACK);
            }
            kbd::TYPEMATIC => {
                self.typematic = b & 0x7f;
                self.send(kbd::ACK);
            }
            _ => match b {
                0 => {
                    self.send(kbd::ACK);
                    let set = self.set;
                    self.send(set);
                }
                1..=3 => {
                    self.set = b;
                    self.set1 = Translator::default();
                    self.send(kbd::ACK);
                }
                _ => {
                    self.send(kbd::RESEND);
                }
            },
        }
    }

    /// A host key byte (set 2); returns `false` if it was lost (scanning off, buffer full).
    fn key(&mut self, b: u8) -> bool {
        if !self.scanning {
            return false;
        }
        let b = if self.set == 1 {
            match self.set1.feed(b) {
                Some(t) => t,
                None => return true,
            }
        } else {
            b
        };
        self.send(b)
    }
}

/// A byte on its way to the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct OutByte {
    value: u8,
    /// From the auxiliary port (AUXB, IRQ 12).
    aux: bool,
    /// The device timed out (status bit 6).
    timeout: bool,
}

impl OutByte {
    fn kbd(value: u8) -> Self {
        OutByte {
            value,
            aux: false,
            timeout: false,
        }
    }

    fn aux(value: u8) -> Self {
        OutByte {
            value,
            aux: true,
            timeout: false,
        }
    }
}

/// The 8042 keyboard controller with its keyboard and an empty auxiliary port.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct I8042 {
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; 32],
    sys_flag: bool,
    /// The last write went to the command port.
    last_was_command: bool,
    /// A controller command waiting for its parameter at port 0x60.
    pending: Option<u8>,
    /// The output buffer.
    out: Option<OutByte>,
    /// What port 0x60 reads when the output buffer is empty.
    last_out: u8,
    /// Controller-generated bytes (command replies), ahead of device bytes.
    ctrl_queue: VecDeque<OutByte>,
    xlate: Translator,
    keyboard: Keyboard,

    #[serde(skip)]
    input: KeyboardInput,

    #[serde(skip)]
    lost_keys: u64,

    #[serde(skip)]
    pub(crate) kbd_irq: IrqLine,

    #[serde(skip)]
    pub(crate) aux_irq: IrqLine,

    #[serde(skip)]
    requests: Requests,
}

impl I8042 {
    /// Takes the state of `saved` (a snapshot's), keeping this controller's
    /// interrupt lines, request handle and host input.
    pub fn restore(&mut self, mut saved: I8042) {
        saved.kbd_irq = std::mem::take(&mut self.kbd_irq);
        saved.aux_irq = std::mem::take(&mut self.aux_irq);
        saved.requests = std::mem::take(&mut self.requests);
        saved.input = std::mem::take(&mut self.input);
        saved.lost_keys = self.lost_keys;
        *self = saved;
    }

    /// A controller in the state a BIOS leaves it ([`DEFAULT_CTR`], keyboard scanning),
    /// raising `kbd_irq` (IRQ 1) and `aux_irq` (IRQ 12) and driving A20 and CPU reset
    /// through `requests`.
    pub fn new(kbd_irq: IrqLine, aux_irq: IrqLine, requests: Requests) -> Self {
        let mut ram = [0; 32];
        ram[0] = DEFAULT_CTR;
        I8042 {
            ram,
            sys_flag: true,
            last_was_command: false,
            pending: None,
            out: None,
            last_out: 0,
            ctrl_queue: VecDeque::with_capacity(CTRL_QUEUE_LEN),
            xlate: Translator::default(),
            keyboard: Keyboard::new(),
            input: KeyboardInput::default(),
            lost_keys: 0,
            kbd_irq,
            aux_irq,
            requests,
        }
    }

    /// Back to the initial state; queued host input is kept (the A20 state lives in
    /// [`Requests`]).
    pub fn reset(&mut self) {
        self.ram = [0; 32];
        self.ram[0] = DEFAULT_CTR;
        self.sys_flag = true;
        self.last_was_command = false;
        self.pending = None;
        self.out = None;
        self.last_out = 0;
        self.ctrl_queue.clear();
        self.xlate = Translator::default();
        self.keyboard = Keyboard::new();
        self.update_irqs(false);
    }

    /// A handle for queueing host key bytes from any thread.
    pub fn input(&self) -> KeyboardInput {
        self.input.clone()
    }

    /// Hands set-2 key bytes to the keyboard now; returns how many it took (none while
    /// scanning is disabled; at most its [`KBD_BUFFER_LEN`]-byte buffer).
    pub fn inject_key_bytes(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.iter().take_while(|&&b| self.keyboard.key(b)).count();
        self.refill();
        n
    }

    /// The command byte.
    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// The keyboard LEDs as last set (bit 0 scroll, 1 num, 2 caps lock).
    pub fn leds(&self) -> u8 {
        self.keyboard.leds
    }

    /// Host key bytes dropped because the keyboard was not scanning or its buffer was full.
    pub fn lost_keys(&self) -> u64 {
        self.lost_keys
    }

    /// The status register.
    pub fn status(&self) -> u8 {
        let mut s = status::INH;
        if let Some(b) = self.out {
            s |= status::OBF;
            if b.aux {
                s |= status::AUXB;
            }
            if b.timeout {
                s |= status::TIMEOUT;
            }
        }
        if self.sys_flag {
            s |= status::SYS;
        }
        if self.last_was_command {
            s |= status::A2;
        }
        s
    }

    fn output_port(&self) -> u8 {
        let mut v = OUT_ONES | OUT_RESET;
        if self.requests.a20() {
            v |= OUT_A20;
        }
        match self.out {
            Some(b) if b.aux => v |= OUT_AUX_OBF,
            Some(_) => v |= OUT_KBD_OBF,
            None => {}
        }
        v
    }

    fn write_output_port(&mut self, v: u8) {
        self.requests.set_a20(v & OUT_A20 != 0);
        if v & OUT_RESET == 0 {
            tracing::debug!("i8042: CPU reset via output port");
            self.requests.request_reset(ResetKind::Soft);
        }
    }

    fn reply(&mut self, b: OutByte) {
        if self.ctrl_queue.len() < CTRL_QUEUE_LEN {
            self.ctrl_queue.push_back(b);
        } else {
            tracing::debug!(byte = b.value, "i8042: reply queue full");
        }
    }

    fn write_ctr(&mut self, v: u8) {
        self.ram[0] = v;
        self.sys_flag = v & ctr::SYS != 0;
        if v & ctr::XLATE == 0 {
            self.xlate = Translator::default();
        }
    }

    fn command(&mut self, c: u8) {
        self.pending = None;
        match c {
            0x20..=0x3f => {
                let v = self.ram[(c - cmd::READ_RAM) as usize];
                self.reply(OutByte::kbd(v));
            }
            0x60..=0x7f
            | cmd::WRITE_OUTPUT_PORT
            | cmd::WRITE_KBD_OBUF
            | cmd::WRITE_AUX_OBUF
            | cmd::WRITE_AUX => self.pending = Some(c),
            cmd::PASSWORD_INSTALLED => self.reply(OutByte::kbd(NO_PASSWORD)),
            cmd::AUX_DISABLE => self.ram[0] |= ctr::AUX_DIS,
            cmd::AUX_ENABLE => self.ram[0] &= !ctr::AUX_DIS,
            cmd::AUX_TEST | cmd::KBD_TEST => self.reply(OutByte::kbd(TEST_OK)),
            cmd::SELF_TEST => {
                self.sys_flag = true;
                self.reply(OutByte::kbd(SELF_TEST_OK));
            }
            cmd::KBD_DISABLE => self.ram[0] |= ctr::KBD_DIS,
            cmd::KBD_ENABLE => self.ram[0] &= !ctr::KBD_DIS,
            cmd::READ_INPUT_PORT => self.reply(OutByte::kbd(INPUT_PORT)),
            cmd::READ_OUTPUT_PORT => {
                let v = self.output_port();
                self.reply(OutByte::kbd(v));
            }
            cmd::A20_DISABLE => self.requests.set_a20(false),
            cmd::A20_ENABLE => self.requests.set_a20(true),
            cmd::READ_TEST_INPUTS => self.reply(OutByte::kbd(0)),
            cmd::PULSE..=0xff => {
                // Bits 0-3 clear = pulse those output port lines low; bit 0 is reset.
                if c & OUT_RESET == 0 {
                    tracing::debug!("i8042: CPU reset pulse");
                    self.requests.request_reset(ResetKind::Soft);
                }
            }
            _ => tracing::debug!(command = c, "i8042: unknown controller command"),
        }
    }

    fn data(&mut self, b: u8) {
        match self.pending.take() {
            Some(c @ 0x60..=0x7f) => {
                let i = (c - cmd::WRITE_RAM) as usize;
                if i == 0 {
                    self.write_ctr(b);
                } else {
                    self.ram[i] = b;
                }
            }
            Some(cmd::WRITE_OUTPUT_PORT) => self.write_output_port(b),
            Some(cmd::WRITE_KBD_OBUF) => self.reply(OutByte::kbd(b)),
            Some(cmd::WRITE_AUX_OBUF) => self.reply(OutByte::aux(b)),
            Some(cmd::WRITE_AUX) => {
                // Sending to the auxiliary device enables its interface; nobody is there
                // to clock the byte, so the controller reports a timeout.
                self.ram[0] &= !ctr::AUX_DIS;
                self.reply(OutByte {
                    value: kbd::RESEND,
                    aux: true,
                    timeout: true,
                });
            }
            _ => {
                // Sending to the keyboard enables its interface.
                self.ram[0] &= !ctr::KBD_DIS;
                self.keyboard.command(b);
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        let v = match self.out.take() {
            Some(b) => b.value,
            None => self.last_out,
        };
        self.refill();
        v
    }

    /// Moves the next waiting byte into an empty output buffer: controller replies first,
    /// then the keyboard's bytes unless its interface is disabled.
    fn refill(&mut self) {
        let mut loaded = false;
        if self.out.is_none() {
            let next = self.ctrl_queue.pop_front().or_else(|| self.next_kbd_byte());
            if let Some(b) = next {
                self.out = Some(b);
                self.last_out = b.value;
                loaded = true;
            }
        }
        self.update_irqs(loaded);
    }

    fn next_kbd_byte(&mut self) -> Option<OutByte> {
        if self.ram[0] & ctr::KBD_DIS != 0 {
            return None;
        }
        while let Some(b) = self.keyboard.out.pop_front() {
            if self.ram[0] & ctr::XLATE == 0 {
                return Some(OutByte::kbd(b));
            }
            if let Some(t) = self.xlate.feed(b) {
                return Some(OutByte::kbd(t));
            }
        }
        None
    }

    fn update_irqs(&mut self, loaded: bool) {
        let (kbd, aux) = match self.out {
            Some(b) if b.aux => (false, self.ram[0] & ctr::AUX_INT != 0),
            Some(_) => (self.ram[0] & ctr::KBD_INT != 0, false),
            None => (false, false),
        };
        for (line, level) in [(&self.kbd_irq, kbd), (&self.aux_irq, aux)] {
            line.set_level(level);
            if loaded && level {
                // A new byte is a new edge even if the line never dropped in between.
                line.pulse();
            }
        }
    }

    fn drain_input(&mut self) {
        let room = KBD_BUFFER_LEN.saturating_sub(self.keyboard.out.len());
        for b in self.input.take(room) {
            if !self.keyboard.key(b) {
                self.lost_keys += 1;
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u8 {
        match offset {
            OFFSET_DATA => self.read_data(),
            OFFSET_COMMAND => self.status(),
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u8) {
        match offset {
            OFFSET_DATA => {
                self.last_was_command = false;
                self.data(v);
            }
            OFFSET_COMMAND => {
                self.last_was_command = true;
                self.command(v);
            }
            _ => return,
        }
        self.refill();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |o| self.read_reg(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| self.write_reg(o, v));
    }

    fn advance_to(&mut self, _now_ns: u64) {
        self.drain_input();
        self.refill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLines;

    fn kbc() -> (I8042, IrqLines, Requests) {
        let lines = IrqLines::new();
        let r = Requests::new(true);
        let k = I8042::new(lines.line(KBD_IRQ), lines.line(AUX_IRQ), r.clone());
        (k, lines, r)
    }

    fn st(k: &mut I8042) -> u8 {
        let mut b = [0];
        k.read(OFFSET_COMMAND, &mut b);
        b[0]
    }

    fn rd(k: &mut I8042) -> u8 {
        let mut b = [0];
        k.read(OFFSET_DATA, &mut b);
        b[0]
    }

    fn cmd(k: &mut I8042, c: u8) {
        k.write(OFFSET_COMMAND, &[c]);
    }

    fn wr(k: &mut I8042, v: u8) {
        k.write(OFFSET_DATA, &[v]);
    }

    /// Linux `__i8042_command`: command, parameters through port 0x60, then each reply
    /// after OBF; `None` models its timeout when OBF never comes.
    fn command(k: &mut I8042, c: u8, params: &[u8], replies: usize) -> Option<Vec<u8>> {
        cmd(k, c);
        for &p in params {
            assert_eq!(st(k) & status::IBF, 0);
            wr(k, p);
        }
        let mut out = Vec::new();
        for _ in 0..replies {
            if st(k) & status::OBF == 0 {
                return None;
            }
            out.push(rd(k));
        }
        Some(out)
    }

    /// Linux `i8042_flush`: reads while OBF, at most 16 bytes.
    fn flush(k: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while st(k) & status::OBF != 0 && v.len() < 16 {
            v.push(rd(k));
        }
        v
    }

    /// All bytes the keyboard port delivers now.
    fn drain(k: &mut I8042) -> Vec<u8> {
        flush(k)
    }

    #[test]
    fn status_after_bios() {
        // PS/2 TR, status register: bit 4 = 1 keyboard not inhibited (Linux warns
        // "Keylock active" otherwise), bit 2 = system flag after a passed self-test.
        let (mut k, lines, _) = kbc();
        assert_eq!(st(&mut k), status::INH | status::SYS);
        assert_eq!(lines.levels(), 0);
        assert_eq!(rd(&mut k), 0, "empty buffer reads the last byte");
        cmd(&mut k, 0xaa);
        assert_eq!(
            st(&mut k) & status::A2,
            status::A2,
            "A2: last write was a command"
        );
        wr(&mut k, 0xf4);
        assert_eq!(st(&mut k) & status::A2, 0);
    }

    #[test]
    fn linux_controller_check_selftest_and_init() {
        // drivers/input/serio/i8042.c: i8042_controller_check (flush), selftest (0xAA ->
        // 0x55), i8042_controller_init (two equal CTR reads, disable kbd + its IRQ,
        // write CTR, flush).
        let (mut k, lines, _) = kbc();
        assert!(flush(&mut k).is_empty());
        assert_eq!(command(&mut k, 0xaa, &[], 1), Some(vec![0x55]));
        let a = command(&mut k, 0x20, &[], 1).unwrap()[0];
        let b = command(&mut k, 0x20, &[], 1).unwrap()[0];
        assert_eq!(a, b);
        assert_eq!(a, DEFAULT_CTR);
        assert_ne!(a & ctr::XLATE, 0, "translated keyboard, as after a BIOS");
        assert_ne!(st(&mut k) & status::INH, 0);
        let ctr_v = (a | ctr::KBD_DIS) & !ctr::KBD_INT;
        assert_eq!(command(&mut k, 0x60, &[ctr_v], 0), Some(vec![]));
        assert_eq!(k.command_byte(), ctr_v);
        assert!(flush(&mut k).is_empty());
        // Interface tests.
        assert_eq!(command(&mut k, 0xab, &[], 1), Some(vec![0]));
        assert_eq!(command(&mut k, 0xa9, &[], 1), Some(vec![0]));
        assert_eq!(command(&mut k, 0xa4, &[], 1), Some(vec![0xf1]));
        // With KBD_INT off, no replies raised IRQ 1.
        assert_eq!(lines.levels(), 0);
    }

    #[test]
    fn linux_check_aux_and_mux_probe() {
        // i8042_check_aux: loopback (0xD3) must come back as AUX data; 0xA7 sets CTR bit
        // 5, 0xA8 clears it; then the IRQ 12 delivery test with AUX_INT on.
        let (mut k, lines, _) = kbc();
        cmd(&mut k, 0xd3);
        wr(&mut k, 0x5a);
        assert_eq!(
            st(&mut k) & (status::OBF | status::AUXB),
            status::OBF | status::AUXB
        );
        assert_eq!(rd(&mut k), 0x5a);
        assert_eq!(command(&mut k, 0xa7, &[], 0), Some(vec![]));
        assert_ne!(command(&mut k, 0x20, &[], 1).unwrap()[0] & ctr::AUX_DIS, 0);
        assert_eq!(command(&mut k, 0xa8, &[], 0), Some(vec![]));
        assert_eq!(command(&mut k, 0x20, &[], 1).unwrap()[0] & ctr::AUX_DIS, 0);
        // i8042_set_mux_mode: F0, 56, A4 echoed unchanged means "not a MUX".
        for v in [0xf0, 0x56, 0xa4] {
            assert_eq!(command(&mut k, 0xd3, &[v], 1), Some(vec![v]));
        }
        // IRQ test: enable AUX port + interrupt, loop 0xA5, expect IRQ 12 with AUXB.
        let c = (k.command_byte() & !ctr::AUX_DIS) | ctr::AUX_INT;
        command(&mut k, 0x60, &[c], 0);
        let _ = lines.take_changes();
        cmd(&mut k, 0xd3);
        wr(&mut k, 0xa5);
        let ch = lines.take_changes().unwrap();
        assert_eq!(ch.levels, 1 << AUX_IRQ);
        assert_eq!(ch.pulses, 1 << AUX_IRQ);
        assert_ne!(st(&mut k) & status::AUXB, 0);
        assert_eq!(rd(&mut k), 0xa5);
        assert_eq!(lines.levels(), 0, "reading the byte drops IRQ 12");
    }

    #[test]
    fn aux_device_absent_times_out() {
        // PS/2 TR: a byte to the auxiliary device that is not clocked out ends in a
        // timeout; the controller reports 0xFE with status bit 6.
        let (mut k, lines, _) = kbc();
        command(&mut k, 0x60, &[ctr::AUX_INT | ctr::SYS | ctr::XLATE], 0);
        let _ = lines.take_changes();
        cmd(&mut k, 0xd4);
        wr(&mut k, 0xf2);
        let s = st(&mut k);
        assert_eq!(
            s & (status::OBF | status::AUXB | status::TIMEOUT),
            status::OBF | status::AUXB | status::TIMEOUT
        );
        assert_eq!(lines.levels(), 1 << AUX_IRQ);
        assert_eq!(rd(&mut k), 0xfe);
        assert_eq!(st(&mut k) & (status::TIMEOUT | status::OBF), 0);
    }

    #[test]
    fn keyboard_probe_translated() {
        // atkbd_probe: F2 -> FA AB 83, passed through the 8042 translation (0x83 -> 0x41,
        // as Linux's ps2_is_keyboard_id expects for a translated port); then F5, F4.
        let (mut k, lines, _) = kbc();
        let _ = lines.take_changes();
        wr(&mut k, 0xf2);
        let ch = lines.take_changes().unwrap();
        assert_eq!(ch.levels, 1 << KBD_IRQ);
        assert_eq!(drain(&mut k), vec![0xfa, 0xab, 0x41]);
        assert_eq!(lines.levels(), 0);
        wr(&mut k, 0xf5);
        assert_eq!(drain(&mut k), vec![0xfa]);
        wr(&mut k, 0xed);
        wr(&mut k, 0x02);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfa]);
        assert_eq!(k.leds(), 2);
        wr(&mut k, 0xf3);
        wr(&mut k, 0x20);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfa]);
        wr(&mut k, 0xf4);
        assert_eq!(drain(&mut k), vec![0xfa]);
        // F4 clears the keyboard's output buffer before it acknowledges; writing to the
        // keyboard re-enables its interface.
        cmd(&mut k, 0xad);
        assert_eq!(k.inject_key_bytes(&[0x1c]), 1);
        wr(&mut k, 0xf4);
        assert_eq!(k.command_byte() & ctr::KBD_DIS, 0);
        assert_eq!(drain(&mut k), vec![0xfa]);
        wr(&mut k, 0xee);
        assert_eq!(drain(&mut k), vec![0xee]);
        wr(&mut k, 0x12);
        assert_eq!(drain(&mut k), vec![0xfe], "unknown command: resend");
        wr(&mut k, 0xfe);
        assert_eq!(drain(&mut k), vec![0xfe], "resend repeats the last byte");
        wr(&mut k, 0xff);
        assert_eq!(drain(&mut k), vec![0xfa, 0xaa]);
    }

    #[test]
    fn keyboard_untranslated_scancode_sets() {
        // atkbd_select_set on an untranslated port: F0 02, F0 00 -> FA 02.
        let (mut k, _, _) = kbc();
        command(&mut k, 0x60, &[ctr::KBD_INT | ctr::SYS], 0);
        wr(&mut k, 0xf2);
        assert_eq!(drain(&mut k), vec![0xfa, 0xab, 0x83]);
        wr(&mut k, 0xf0);
        wr(&mut k, 0x02);
        wr(&mut k, 0xf0);
        wr(&mut k, 0x00);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfa, 0xfa, 0xfa, 0x02]);
        wr(&mut k, 0xf0);
        wr(&mut k, 0x07);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfe]);
        // Set 1: the keyboard itself sends set-1 codes.
        wr(&mut k, 0xf0);
        wr(&mut k, 0x01);
        drain(&mut k);
        k.inject_key_bytes(&[0x1c, 0xf0, 0x1c]);
        assert_eq!(drain(&mut k), vec![0x1e, 0x9e]);
        // A command while a parameter is expected starts over.
        wr(&mut k, 0xed);
        wr(&mut k, 0xf2);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfa, 0xab, 0x83]);
    }

    #[test]
    fn key_injection_translates_make_and_break() {
        // 8042 translation: set-2 'A' make 1C -> 1E; break F0 1C -> 9E; E0 passes.
        let (mut k, lines, _) = kbc();
        assert_eq!(k.inject_key_bytes(&[0x1c, 0xf0, 0x1c, 0xe0, 0x75]), 5);
        assert_eq!(lines.levels(), 1 << KBD_IRQ);
        assert_eq!(drain(&mut k), vec![0x1e, 0x9e, 0xe0, 0x48]);
        // Through the host queue, at the next time step.
        let input = k.input();
        assert_eq!(input.push(&[0x29, 0xf0, 0x29]), 3);
        assert_eq!(st(&mut k) & status::OBF, 0);
        k.advance_to(1);
        assert!(input.is_empty());
        assert_eq!(drain(&mut k), vec![0x39, 0xb9]);
        // Scanning disabled: keys are lost, as on a real keyboard.
        wr(&mut k, 0xf5);
        drain(&mut k);
        input.push(&[0x1c]);
        k.advance_to(2);
        assert_eq!(k.lost_keys(), 1);
        assert!(drain(&mut k).is_empty());
    }

    #[test]
    fn kbd_disable_holds_bytes_and_queues_are_bounded() {
        // 0xAD holds the keyboard's bytes (clock inhibited); 0xAE releases them. The
        // keyboard buffers 16 bytes; the host queue is bounded too.
        let (mut k, _, _) = kbc();
        cmd(&mut k, 0xad);
        assert_ne!(k.command_byte() & ctr::KBD_DIS, 0);
        assert_eq!(k.inject_key_bytes(&[0x1c; 40]), KBD_BUFFER_LEN);
        assert_eq!(st(&mut k) & status::OBF, 0);
        // Controller replies still come through.
        assert_eq!(
            command(&mut k, 0x20, &[], 1).unwrap()[0] & ctr::KBD_DIS,
            ctr::KBD_DIS
        );
        cmd(&mut k, 0xae);
        assert_eq!(drain(&mut k).len(), KBD_BUFFER_LEN);
        let input = k.input();
        assert_eq!(
            input.push(&vec![0; KEY_QUEUE_CAPACITY + 10]),
            KEY_QUEUE_CAPACITY
        );
        for _ in 0..10_000 {
            cmd(&mut k, 0x20);
        }
        let mut n = 0;
        while st(&mut k) & status::OBF != 0 && n < 100 {
            rd(&mut k);
            n += 1;
        }
        assert_eq!(
            n,
            1 + CTRL_QUEUE_LEN,
            "the output buffer plus the reply queue"
        );
    }

    #[test]
    fn irq1_per_byte_and_gated_by_command_byte() {
        // IRQ 1 follows OBF when CTR bit 0 is set; each new byte is a new edge.
        let (mut k, lines, _) = kbc();
        k.inject_key_bytes(&[0x1c, 0x32]);
        assert_eq!(lines.take_changes().unwrap().pulses, 1 << KBD_IRQ);
        assert_eq!(rd(&mut k), 0x1e);
        let ch = lines.take_changes().unwrap();
        assert_eq!((ch.levels, ch.pulses), (1 << KBD_IRQ, 1 << KBD_IRQ));
        assert_eq!(rd(&mut k), 0x30);
        assert_eq!(lines.levels(), 0);
        command(&mut k, 0x60, &[ctr::XLATE | ctr::SYS], 0);
        k.inject_key_bytes(&[0x1c]);
        assert_eq!(lines.levels(), 0);
        assert_ne!(st(&mut k) & status::OBF, 0);
        // Enabling the interrupt with a byte waiting raises the line.
        command(&mut k, 0x60, &[ctr::XLATE | ctr::SYS | ctr::KBD_INT], 0);
        // The CTR write happened with the byte still waiting: it stays first.
        assert_eq!(lines.levels(), 1 << KBD_IRQ);
        assert_eq!(rd(&mut k), 0x1e);
    }

    #[test]
    fn output_port_a20_and_reset() {
        // PS/2 TR output port: bit 1 A20 gate, bit 0 system reset (active low); command
        // 0xFE pulses bit 0.
        let (mut k, _, r) = kbc();
        let v = command(&mut k, 0xd0, &[], 1).unwrap()[0];
        assert_eq!(v & (OUT_RESET | OUT_A20), OUT_RESET | OUT_A20);
        command(&mut k, 0xd1, &[0xdd], 0);
        assert_eq!(r.take().a20, Some(false));
        assert_eq!(command(&mut k, 0xd0, &[], 1).unwrap()[0] & OUT_A20, 0);
        command(&mut k, 0xd1, &[0xdf], 0);
        let p = r.take();
        assert_eq!((p.a20, p.reset), (Some(true), None));
        command(&mut k, 0xd1, &[0xde], 0);
        assert_eq!(r.take().reset, Some(ResetKind::Soft));
        cmd(&mut k, 0xfe);
        assert_eq!(r.take().reset, Some(ResetKind::Soft));
        cmd(&mut k, 0xff);
        assert!(!r.is_pending());
        cmd(&mut k, 0xdd);
        assert!(!r.a20());
        cmd(&mut k, 0xdf);
        assert!(r.a20());
    }

    #[test]
    fn d2_and_ram_bytes() {
        let (mut k, _, _) = kbc();
        command(&mut k, 0xd2, &[0x1c], 0);
        assert_eq!(st(&mut k) & status::AUXB, 0);
        assert_eq!(rd(&mut k), 0x1c, "0xD2 data is not translated");
        command(&mut k, 0x65, &[0x77], 0);
        assert_eq!(command(&mut k, 0x25, &[], 1), Some(vec![0x77]));
        // A command cancels a pending parameter: the next data byte goes to the keyboard.
        cmd(&mut k, 0x60);
        cmd(&mut k, 0xa8);
        wr(&mut k, 0xee);
        assert_eq!(rd(&mut k), 0xee);
        assert_eq!(k.command_byte(), DEFAULT_CTR & !ctr::AUX_DIS);
        // Writing CTR without SYS clears the status bit; self-test sets it again.
        command(&mut k, 0x60, &[0], 0);
        assert_eq!(st(&mut k) & status::SYS, 0);
        command(&mut k, 0xaa, &[], 1);
        assert_ne!(st(&mut k) & status::SYS, 0);
        k.reset();
        assert_eq!(k.command_byte(), DEFAULT_CTR);
    }

    #[test]
    fn every_byte_everywhere_is_safe() {
        let (mut k, _, _) = kbc();
        for c in 0..=255u8 {
            for v in [0u8, 0x5a, 0xff, c] {
                cmd(&mut k, c);
                wr(&mut k, v);
                wr(&mut k, v);
                let _ = flush(&mut k);
                let mut buf = [0u8; 8];
                k.read(0, &mut buf);
                k.write(1, &buf);
            }
        }
        k.inject_key_bytes(&[0xf0; 100]);
        k.advance_to(u64::MAX);
    }
}
