//! Port I/O: IN and OUT, with the IOPL and TSS I/O-permission-bitmap checks.

use iced_x86::{Instruction, OpKind};
use ox86_mmu::Port;

use crate::access::Word;
use crate::exception::{Exception, Fault};
use crate::flags::size_mask;
use crate::state::{RAX, RDX};
use crate::Exec;

impl Exec<'_> {
    /// Checks that the current privilege may access `size` ports from `port`.
    pub fn check_io(&mut self, port: u16, size: u32) -> Fault {
        if !self.s.protected() || (!self.s.v86() && self.s.cpl <= self.s.iopl()) {
            return Ok(());
        }
        let tr = self.s.tr;
        // Only a 32-bit TSS has a bitmap.
        if tr.attr & 8 == 0 || tr.limit < 0x67 {
            return Err(Exception::GP0);
        }
        let base: u16 = self.read_sys(tr.base + 0x66)?;
        let byte = base as u64 + (port as u64 >> 3);
        if byte + 1 > tr.limit as u64 {
            return Err(Exception::GP0);
        }
        let bits: u16 = self.read_sys(tr.base + byte)?;
        let mask = (((1u32 << size) - 1) << (port & 7)) as u16;
        if bits & mask != 0 {
            return Err(Exception::GP0);
        }
        Ok(())
    }
}

impl Exec<'_> {
    /// Reads a port, with device time brought up to this instruction.
    pub fn port_in(&mut self, port: u16, size: u32) -> u32 {
        self.io.sync(self.s.icount);
        let v = self.io.port_read(Port(port), size as u8);
        if let Some(t) = self.trace.as_deref_mut() {
            t.port(self.s.icount, false, port, size, v);
        }
        v
    }

    /// Writes a port, with device time brought up to this instruction.
    pub fn port_out(&mut self, port: u16, size: u32, v: u32) {
        self.io.sync(self.s.icount);
        if let Some(t) = self.trace.as_deref_mut() {
            t.port(self.s.icount, true, port, size, v);
        }
        self.io.port_write(Port(port), size as u8, v);
    }
}

fn port_of(e: &Exec<'_>, i: &Instruction, n: u32) -> u16 {
    match i.op_kind(n) {
        OpKind::Register => e.s.regs[RDX] as u16,
        _ => i.immediate(n) as u16,
    }
}

/// IN AL/AX/EAX, imm8 or DX.
pub fn exec_in<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let port = port_of(e, i, 1);
    e.check_io(port, W::SIZE)?;
    let v = e.port_in(port, W::SIZE) as u64;
    let m = size_mask(W::SIZE);
    e.s.regs[RAX] = if W::SIZE == 4 {
        v & m
    } else {
        (e.s.regs[RAX] & !m) | (v & m)
    };
    Ok(())
}

/// OUT imm8 or DX, AL/AX/EAX.
pub fn exec_out<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let port = port_of(e, i, 0);
    e.check_io(port, W::SIZE)?;
    let v = e.s.regs[RAX] & size_mask(W::SIZE);
    e.port_out(port, W::SIZE, v as u32);
    Ok(())
}
