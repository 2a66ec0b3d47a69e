//! FSTENV/FLDENV, FSAVE/FRSTOR and FXSAVE/FXRSTOR memory images.

use crate::float::F80;
use crate::state::X87State;
use crate::status::EXC_MASK;

/// Layout of an x87 environment image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvLayout {
    /// 14-byte (16-bit operand size) instead of 28-byte image.
    pub size16: bool,
    /// Real/virtual-8086 mode layout.
    pub real: bool,
}

impl EnvLayout {
    /// Size of the environment image in bytes.
    pub fn len(self) -> usize {
        if self.size16 {
            14
        } else {
            28
        }
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
fn get16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn get32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl X87State {
    /// Writes the environment image into `out` (at least `layout.len()` bytes).
    pub fn store_env(&self, layout: EnvLayout, out: &mut [u8]) {
        let fip = self.fip as u32;
        let fdp = self.fdp as u32;
        let fop = self.fop & 0x7FF;
        if layout.size16 {
            put16(out, 0, self.fcw);
            put16(out, 2, self.fsw);
            put16(out, 4, self.ftw_full());
            put16(out, 6, fip as u16);
            if layout.real {
                put16(out, 8, (((fip >> 16) & 0xF) as u16) << 12 | fop);
                put16(out, 10, fdp as u16);
                put16(out, 12, (((fdp >> 16) & 0xF) as u16) << 12);
            } else {
                put16(out, 8, self.fcs);
                put16(out, 10, fdp as u16);
                put16(out, 12, self.fds);
            }
        } else {
            put32(out, 0, 0xFFFF_0000 | u32::from(self.fcw));
            put32(out, 4, 0xFFFF_0000 | u32::from(self.fsw));
            put32(out, 8, 0xFFFF_0000 | u32::from(self.ftw_full()));
            if layout.real {
                put32(out, 12, 0xFFFF_0000 | (fip & 0xFFFF));
                put32(out, 16, ((fip >> 16) << 12) | u32::from(fop));
                put32(out, 20, 0xFFFF_0000 | (fdp & 0xFFFF));
                put32(out, 24, (fdp >> 16) << 12);
            } else {
                put32(out, 12, fip);
                put32(out, 16, u32::from(self.fcs) | (u32::from(fop) << 16));
                put32(out, 20, fdp);
                put32(out, 24, 0xFFFF_0000 | u32::from(self.fds));
            }
        }
    }

    /// Loads the environment from an image of at least `layout.len()` bytes.
    pub fn load_env(&mut self, layout: EnvLayout, b: &[u8]) {
        let (fcw, fsw, ftw) = if layout.size16 {
            (get16(b, 0), get16(b, 2), get16(b, 4))
        } else {
            (get16(b, 0), get16(b, 4), get16(b, 8))
        };
        if layout.size16 {
            if layout.real {
                let w8 = get16(b, 8);
                self.fip = u64::from(get16(b, 6)) | (u64::from(w8 >> 12) << 16);
                self.fop = w8 & 0x7FF;
                self.fdp = u64::from(get16(b, 10)) | (u64::from(get16(b, 12) >> 12) << 16);
            } else {
                self.fip = u64::from(get16(b, 6));
                self.fcs = get16(b, 8);
                self.fdp = u64::from(get16(b, 10));
                self.fds = get16(b, 12);
            }
        } else if layout.real {
            let d16 = get32(b, 16);
            self.fip = u64::from(get16(b, 12)) | (u64::from(d16 >> 12) << 16);
            self.fop = (d16 & 0x7FF) as u16;
            self.fdp = u64::from(get16(b, 20)) | (u64::from(get32(b, 24) >> 12) << 16);
        } else {
            self.fip = u64::from(get32(b, 12));
            self.fcs = get16(b, 16);
            self.fop = get16(b, 18) & 0x7FF;
            self.fdp = u64::from(get32(b, 20));
            self.fds = get16(b, 24);
        }
        self.set_fcw(fcw);
        self.fsw = fsw;
        self.set_ftw_full(ftw);
        self.update_es();
    }

    /// Writes the FSAVE image (environment + ST0-ST7) into `out`.
    pub fn store_save(&self, layout: EnvLayout, out: &mut [u8]) {
        self.store_env(layout, out);
        let base = layout.len();
        for i in 0..8 {
            let off = base + 10 * i;
            if let Some(s) = out.get_mut(off..off + 10) {
                s.copy_from_slice(&self.st(i).to_le_bytes());
            }
        }
    }

    /// Loads the FRSTOR image.
    pub fn load_save(&mut self, layout: EnvLayout, b: &[u8]) {
        self.load_env(layout, b);
        let base = layout.len();
        for i in 0..8 {
            let off = base + 10 * i;
            let mut r = [0u8; 10];
            if let Some(s) = b.get(off..off + 10) {
                r.copy_from_slice(s);
            }
            let p = self.phys(i);
            self.regs[p] = F80::from_le_bytes(r);
        }
    }

    /// Writes the first 416 bytes of the FXSAVE image (bytes 416-511 are not written).
    pub fn store_fxsave(&self, rex_w: bool, out: &mut [u8; 416]) {
        put16(out, 0, self.fcw);
        put16(out, 2, self.fsw);
        out[4] = self.tag_valid;
        out[5] = 0;
        put16(out, 6, self.fop & 0x7FF);
        if rex_w {
            out[8..16].copy_from_slice(&self.fip.to_le_bytes());
            out[16..24].copy_from_slice(&self.fdp.to_le_bytes());
        } else {
            put32(out, 8, self.fip as u32);
            put16(out, 12, self.fcs);
            put16(out, 14, 0);
            put32(out, 16, self.fdp as u32);
            put16(out, 20, self.fds);
            put16(out, 22, 0);
        }
        put32(out, 24, self.mxcsr);
        put32(out, 28, self.mxcsr_mask);
        for i in 0..8 {
            let off = 32 + 16 * i;
            out[off..off + 10].copy_from_slice(&self.st(i).to_le_bytes());
            out[off + 10..off + 16].fill(0);
        }
        out[160..416].copy_from_slice(&self.xmm_blob);
    }

    /// Loads an FXRSTOR image (MXCSR reserved bits are dropped: raising #GP for
    /// them is the CPU's job).
    pub fn load_fxrstor(&mut self, rex_w: bool, b: &[u8; 416]) {
        self.set_fcw(get16(b, 0));
        self.fsw = get16(b, 2);
        self.tag_valid = b[4];
        self.fop = get16(b, 6) & 0x7FF;
        if rex_w {
            let mut q = [0u8; 8];
            q.copy_from_slice(&b[8..16]);
            self.fip = u64::from_le_bytes(q);
            q.copy_from_slice(&b[16..24]);
            self.fdp = u64::from_le_bytes(q);
        } else {
            self.fip = u64::from(get32(b, 8));
            self.fcs = get16(b, 12);
            self.fdp = u64::from(get32(b, 16));
            self.fds = get16(b, 20);
        }
        self.mxcsr = get32(b, 24) & self.mxcsr_mask;
        for i in 0..8 {
            let off = 32 + 16 * i;
            let mut r = [0u8; 10];
            r.copy_from_slice(&b[off..off + 10]);
            let p = self.phys(i);
            self.regs[p] = F80::from_le_bytes(r);
        }
        self.xmm_blob.copy_from_slice(&b[160..416]);
        self.update_es();
    }

    /// FNCLEX.
    pub fn clear_exceptions(&mut self) {
        self.fsw &= !(EXC_MASK | crate::status::SF | crate::status::ES | crate::status::B);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trip() {
        for (size16, real) in [(false, false), (false, true), (true, false), (true, true)] {
            let layout = EnvLayout { size16, real };
            let mut s = X87State::default();
            s.push(F80::ONE);
            s.fcw = 0x0272;
            s.fip = 0x1234;
            s.fdp = 0x5678;
            s.fop = 0x1D9;
            if !real {
                s.fcs = 8;
                s.fds = 0x10;
            }
            let mut img = [0u8; 108];
            s.store_save(layout, &mut img);
            let mut t = X87State::default();
            t.load_save(layout, &img);
            assert_eq!(t.st(0), F80::ONE);
            assert_eq!(t.fcw, s.fcw);
            assert_eq!(t.fsw, s.fsw);
            assert_eq!(t.fip, s.fip);
            assert_eq!(t.fdp, s.fdp);
            assert_eq!(t.tag_valid, s.tag_valid);
        }
    }
}
