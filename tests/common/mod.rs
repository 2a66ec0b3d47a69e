//! Shared helpers for the integration tests: locating the `ox86` binary and the
//! guest programs, and running a guest as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `ox86` binary of the same profile as this test (built by `cargo build -p
/// ox86-frontend` first; `.ci/run` does that), or the one `OX86_BIN` names (an
/// aarch64 build run through `OX86_RUNNER`, see scripts/test-aarch64).
pub fn ox86_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("OX86_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("ox86");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ox86-frontend` (same profile) first",
        bin.display()
    );
    bin
}

/// Builds the guest test programs once (scripts/build-guests) and returns their folder.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = root().join("target").join("guests");
        let st = Command::new("bash")
            .arg(root().join("scripts/build-guests"))
            .arg(&out)
            .status()
            .expect("run scripts/build-guests");
        assert!(
            st.success(),
            "scripts/build-guests failed (needs nasm and gcc-multilib)"
        );
        out
    })
}

/// Fetches Debian's kernel, builds the initramfs and the System.map once
/// (scripts/fetch-guests, cached between runs) and returns their folder.
pub fn linux_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = root().join("target").join("linux");
        let st = Command::new("bash")
            .arg(root().join("scripts/fetch-guests"))
            .arg(&out)
            .status()
            .expect("run scripts/fetch-guests");
        assert!(st.success(), "scripts/fetch-guests failed");
        out
    })
}

/// A command that runs the `ox86` binary: directly, or through the emulator that
/// `OX86_RUNNER` names (`qemu-aarch64` for an aarch64 build on an x86-64 host).
pub fn ox86_command() -> Command {
    match std::env::var_os("OX86_RUNNER") {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(ox86_bin());
            c
        }
        None => Command::new(ox86_bin()),
    }
}

/// How much longer than natively a run may take: `OX86_TIME_SCALE` (an integer, 1 when
/// unset), for a binary run under an emulator.
pub fn time_scale() -> u32 {
    std::env::var("OX86_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Runs `ox86` with `args`, killing it after `timeout`. Returns its output.
pub fn run_ox86(args: &[&str], timeout: Duration) -> Output {
    run_ox86_input(args, None, timeout)
}

/// Runs `ox86` with `args` and `input` on its standard input (then kept open, as a
/// terminal would be), killing it after `timeout`.
pub fn run_ox86_input(args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Output {
    let mut child = ox86_command()
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ox86");
    // Keep stdin open until the process ends: EOF is not a user action.
    let _stdin = input.map(|bytes| {
        use std::io::Write;
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(bytes).expect("write stdin");
        w.flush().expect("flush stdin");
        w
    });
    // Read as the child writes, so that it never blocks on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<_>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<_>));
    let timeout = timeout * time_scale();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ox86 {:?} timed out after {:?}\nstdout:\n{}\nstderr:\n{}",
                args,
                timeout,
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Serial text with carriage returns removed.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).replace('\r', "")
}

/// The two engines every guest test runs on: the JIT (the default) and the
/// interpreter alone.
pub const ENGINES: [&[&str]; 2] = [&[], &["--interp"]];

/// The engines to run: [`ENGINES`], or those `OX86_ENGINES` names (`jit`, `interp`,
/// comma-separated; scripts/test-aarch64 boots Linux with the JIT only, as the
/// interpreter under an emulator would take most of the time budget).
pub fn engines() -> Vec<&'static [&'static str]> {
    let Ok(want) = std::env::var("OX86_ENGINES") else {
        return ENGINES.to_vec();
    };
    let picked: Vec<_> = ENGINES
        .into_iter()
        .filter(|e| want.split(',').any(|w| w.trim() == engine_name(e)))
        .collect();
    assert!(!picked.is_empty(), "OX86_ENGINES={want:?} names no engine");
    picked
}

/// The engine's name for messages.
pub fn engine_name(engine: &[&str]) -> &'static str {
    if engine.contains(&"--interp") {
        "interp"
    } else if engine.contains(&"--lockstep") {
        "lockstep"
    } else {
        "jit"
    }
}
