//! Writes the built-in demo guest as a raw disk image that QEMU (SeaBIOS) can boot:
//!
//! ```text
//! cargo run -p ox86-bios --example demo_image -- demo.img
//! qemu-system-i386 -accel tcg -display none -drive format=raw,file=demo.img \
//!     -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04
//! ```
//!
//! The image is padded to 64 KiB so the BIOS sees a plausible disk.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: demo_image OUTPUT.img");
        return ExitCode::from(2);
    };
    let (mut bytes, _addr, _entry) = ox86_bios::demo_image();
    bytes.resize(bytes.len().max(64 * 1024), 0);
    if let Err(e) = std::fs::write(&path, &bytes) {
        eprintln!("cannot write {path}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
