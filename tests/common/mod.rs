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
/// ox86-frontend` first; `.ci/run` does that).
pub fn ox86_bin() -> PathBuf {
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

/// Runs `ox86` with `args`, killing it after `timeout`. Returns its output.
pub fn run_ox86(args: &[&str], timeout: Duration) -> Output {
    run_ox86_input(args, None, timeout)
}

/// Runs `ox86` with `args` and `input` on its standard input (then kept open, as a
/// terminal would be), killing it after `timeout`.
pub fn run_ox86_input(args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Output {
    let mut child = Command::new(ox86_bin())
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
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "ox86 {:?} timed out after {:?}\nstdout:\n{}\nstderr:\n{}",
                args,
                timeout,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Serial text with carriage returns removed.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).replace('\r', "")
}

/// The two engines every guest test runs on: the JIT (the default) and the
/// interpreter alone.
pub const ENGINES: [&[&str]; 2] = [&[], &["--interp"]];

/// The engine's name for messages.
pub fn engine_name(engine: &[&str]) -> &'static str {
    match engine.first() {
        None => "jit",
        Some(&"--interp") => "interp",
        Some(_) => "lockstep",
    }
}
