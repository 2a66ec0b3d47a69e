//! The POST diagnostic port 0x80: firmware writes progress codes there, and Linux uses it
//! as an I/O delay. The device remembers the last byte written; reads return it.

use ox86_mmu::Port;

use crate::bus::{read_bytewise, BusDevice};

/// The POST code port.
pub const POST_PORT: Port = Port(0x80);

/// The POST code latch.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PostCode {
    last: u8,
}

impl PostCode {
    /// A latch holding 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code written.
    pub fn last(&self) -> u8 {
        self.last
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let last = self.last;
        read_bytewise(0, data, |_| last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.last() {
            if b != self.last {
                tracing::trace!(code = b, "POST code");
            }
            self.last = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_last_code() {
        let mut p = PostCode::new();
        let mut b = [0xff];
        p.read(0, &mut b);
        assert_eq!(b, [0]);
        p.write(0, &[0x55]);
        p.write(0, &[0xaa]);
        p.read(0, &mut b);
        assert_eq!(b, [0xaa]);
        assert_eq!(p.last(), 0xaa);
        p.write(0, &[]);
        assert_eq!(p.last(), 0xaa);
    }
}
