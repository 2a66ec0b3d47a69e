//! Boots the built-in demo under QEMU (SeaBIOS, TCG) as a disk image and compares its
//! serial output and exit status with the recorded fixture. Skipped, with a note on
//! stderr, when `qemu-system-i386` is not installed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ox86_bios::{demo_image, DEMO_EXIT_STATUS, DEMO_SERIAL_OUTPUT};

fn qemu() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join("qemu-system-i386"))
        .find(|p| p.is_file())
}

#[test]
fn demo_output_matches_qemu() {
    // A missing QEMU is a failure, not a skip: scripts/test installs it.
    let qemu = qemu()
        .expect("qemu-system-i386 not found (apt-get install qemu-system-x86; scripts/test does)");
    let dir = std::env::temp_dir().join(format!("ox86-bios-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("demo.img");
    let serial = dir.join("serial.txt");
    let (mut bytes, _, _) = demo_image();
    bytes.resize(64 * 1024, 0);
    std::fs::write(&disk, &bytes).unwrap();

    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-display",
            "none",
            "-no-reboot",
            "-m",
            "32",
        ])
        .arg("-drive")
        .arg(format!("format=raw,file={}", disk.display()))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("QEMU did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&serial).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out, DEMO_SERIAL_OUTPUT);
    assert_eq!(status.code(), Some(DEMO_EXIT_STATUS));
}
