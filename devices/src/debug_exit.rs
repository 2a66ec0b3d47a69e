//! QEMU's `isa-debug-exit` device: a write of `v` asks the machine to exit with status
//! `(v << 1) | 1`, so a guest test can report success or failure to the host.

use ox86_mmu::Port;

use crate::bus::{le_value, BusDevice};
use crate::requests::Requests;

/// The port QEMU's `isa-debug-exit` uses by default (`iobase=0xf4`).
pub const DEBUG_EXIT_PORT: Port = Port(0xf4);
/// Width of the port window (`iosize=4`).
pub const DEBUG_EXIT_LEN: u16 = 4;

/// The exit status the machine reports for a written value.
pub fn exit_status(value: u32) -> u32 {
    (value << 1) | 1
}

/// The isa-debug-exit device.
#[derive(Debug)]
pub struct DebugExit {
    requests: Requests,
}

impl DebugExit {
    /// A device posting its exit requests to `requests`.
    pub fn new(requests: Requests) -> Self {
        DebugExit { requests }
    }
}

impl BusDevice for DebugExit {
    /// Reads return 0, as QEMU's device does.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// Any write, of any size at any offset, exits with the value written.
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let value = le_value(data) as u32;
        tracing::debug!(value, "isa-debug-exit write");
        self.requests.request_exit(exit_status(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_exit_with_shifted_status() {
        let r = Requests::new(true);
        let mut d = DebugExit::new(r.clone());
        d.write(0, &[0x10]);
        // QEMU docs: "exit code is (val << 1) | 1".
        assert_eq!(r.take().exit_status, Some(0x21));
        d.write(0, &[0x34, 0x12]);
        assert_eq!(r.take().exit_status, Some(0x2469));
        d.write(0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.take().exit_status, Some(0xffff_ffff));
        d.write(2, &[0]);
        assert_eq!(r.take().exit_status, Some(1));
        let mut buf = [0xaa; 4];
        d.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
        assert!(!r.is_pending());
    }
}
