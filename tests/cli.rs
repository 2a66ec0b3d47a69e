//! The `ox86` command as a user meets it: the demo guest, and bad input that must give
//! one clear line on stderr and a non-zero exit, never a panic.

mod common;

use std::time::Duration;

use common::{root, run_ox86, run_ox86_input, text};

#[test]
fn demo_guest_runs_and_matches_qemu_recording() {
    let out = run_ox86(&["run"], Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(ox86::bios::DEMO_EXIT_STATUS),
        "stderr: {}",
        text(&out.stderr)
    );
    // The fixture was recorded from the same image under QEMU (bios/tests/demo_qemu.rs
    // checks that it still matches QEMU's output).
    let want = std::fs::read_to_string(root().join("bios/tests/fixtures/demo_serial.txt")).unwrap();
    assert_eq!(text(&out.stdout), want.replace('\r', ""));
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let out = run_ox86(args, Duration::from_secs(30));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: want one line on stderr, got:\n{err}"
    );
    assert!(err.starts_with("ox86: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: '{needle}' not in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{args:?}: {err}"
    );
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("ox86-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"this is not a kernel image at all").unwrap();
    // A truncated ELF: the header of a real guest program cut short.
    let elf = std::fs::read(common::guests_dir().join("c.elf")).unwrap();
    let truncated = dir.join("truncated.elf");
    std::fs::write(&truncated, &elf[..200]).unwrap();
    // A corrupt ELF: program headers pointing far outside the file.
    let mut bad = elf.clone();
    bad[0x1c..0x20].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let corrupt = dir.join("corrupt.elf");
    std::fs::write(&corrupt, &bad).unwrap();
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();

    assert_one_line_error(
        &["run", "--kernel", "/nonexistent/kernel"],
        "cannot read kernel",
    );
    assert_one_line_error(&["run", "--kernel", &p(&junk)], "");
    assert_one_line_error(&["run", "--kernel", &p(&empty)], "");
    assert_one_line_error(&["run", "--kernel", &p(&truncated)], "");
    assert_one_line_error(&["run", "--kernel", &p(&corrupt)], "");
    assert_one_line_error(&["run", "-m", "12X"], "memory size");
    assert_one_line_error(&["run", "-m", "0"], "RAM size");
    assert_one_line_error(&["run", "-m", "5G"], "RAM size");
    assert_one_line_error(&["run", "--bogus-option"], "unexpected argument");
    assert_one_line_error(&["frobnicate"], "unrecognized subcommand");
    assert_one_line_error(&["run", "--serial", "tcp:1234"], "--serial");
    assert_one_line_error(&["run", "--initrd", &p(&junk)], "--initrd needs --kernel");
    assert_one_line_error(&["run", "--jit-cache", &p(&junk)], "not a directory");
    assert_one_line_error(&["run", "--jit-cache-size", "lots"], "--jit-cache-size");
    assert_one_line_error(&["run", "--rtc", "base=yesterday"], "bad RTC base");
    assert_one_line_error(&["run", "--rtc", "base=2023-02-29"], "bad RTC base");
    assert_one_line_error(&["run", "--rtc", "clock=host"], "bad --rtc");
    assert_one_line_error(&["run", "--hash-every", "0"], "--hash-every");
    assert_one_line_error(&["run", "--hash-every", "often"], "invalid value");
    std::fs::remove_dir_all(&dir).ok();
}

/// The digest lines of a run's standard error.
fn digests(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("ox86 digest: "))
        .collect()
}

#[test]
fn icount_digests_repeat_and_follow_the_state() {
    let args = [
        "run",
        "--serial",
        "none",
        "--icount",
        "--stats",
        "--hash-every",
        "5000",
    ];
    let run = |extra: &[&str]| {
        let all: Vec<&str> = args.iter().chain(extra).copied().collect();
        let out = run_ox86(&all, Duration::from_secs(60));
        // 1: the demo ends so (isa-debug-exit); 3: the instruction limit.
        assert!(
            matches!(out.status.code(), Some(1 | 3)),
            "{}",
            text(&out.stderr)
        );
        text(&out.stderr)
    };
    let (a, b, c) = (run(&[]), run(&["--interp"]), run(&["--max-insns", "20000"]));
    let (da, db, dc) = (digests(&a), digests(&b), digests(&c));
    // Every 5000 instructions of the demo's 33,504, then --stats's at the end.
    assert_eq!(da.len(), 7, "{a}");
    assert!(da[0].ends_with("at instruction 5000"), "{a}");
    assert_eq!(
        da, db,
        "the JIT and the interpreter went through other states"
    );
    // Stopped at 20,000: the same four digests, then a final one of its own.
    assert_eq!(dc.len(), 5, "{c}");
    assert_eq!(dc[..4], da[..4]);
    assert!(
        dc[4].ends_with("at instruction 20000") && dc[4] == dc[3],
        "{c}"
    );
    // The instruction count is in every digest; the demo also writes memory.
    let whole: std::collections::HashSet<&str> = da.iter().map(|d| &d[13..45]).collect();
    assert_eq!(whole.len(), da.len(), "{a}");
    let ram: std::collections::HashSet<&str> = da
        .iter()
        .filter_map(|d| d.split("ram ").nth(1))
        .map(|r| &r[..16])
        .collect();
    assert!(ram.len() > 1, "RAM never changed? {a}");
}

#[test]
fn a_snapshot_resumes_to_the_same_state_and_bad_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("ox86-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let snap = dir.join("demo.snap");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--icount", "--stats"];
        args.extend_from_slice(extra);
        let out = run_ox86(&args, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let d = digests(&err)
            .last()
            .map(|s| s.to_string())
            .unwrap_or_default();
        (text(&out.stdout), d, err)
    };
    let (out_full, d_full, _) = run(&[]);
    let at = format!("20000:{}", p(&snap));
    let (out_snap, d_snap, _) = run(&["--snapshot-at", &at]);
    assert_eq!(d_snap, d_full, "taking the snapshot changed the run");
    assert_eq!(out_snap, out_full);
    for engine in [&[][..], &["--interp"][..]] {
        let mut args = vec!["--loadvm", snap.to_str().unwrap()];
        args.extend_from_slice(engine);
        let (out, d, err) = run(&args);
        assert_eq!(d, d_full, "{engine:?}: resumed elsewhere\n{err}");
        assert!(err.contains("ox86 stats: 13504 instructions"), "{err}");
        assert!(
            out_full.ends_with(&out),
            "{engine:?}: not the rest of the output:\n{out}"
        );
    }
    let good = std::fs::read(&snap).unwrap();
    let bad = |name: &str, bytes: &[u8]| {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        p(&f)
    };
    let mut flipped = good.clone();
    let k = flipped.len() / 2;
    flipped[k] ^= 0x40;
    let mut version = good.clone();
    version[8] += 1;
    let loadvm = |f: &str, needle: &str, extra: &[&str]| {
        let mut args = vec!["run", "--loadvm", f];
        args.extend_from_slice(extra);
        assert_one_line_error(&args, needle);
    };
    loadvm(
        &bad("cut", &good[..good.len() / 2]),
        "truncated or corrupt",
        &[],
    );
    loadvm(&bad("short", &good[..10]), "truncated or corrupt", &[]);
    loadvm(&bad("flipped", &flipped), "truncated or corrupt", &[]);
    loadvm(&bad("junk", b"not a snapshot"), "not an ox86 snapshot", &[]);
    loadvm(&bad("empty", b""), "not an ox86 snapshot", &[]);
    loadvm(&bad("version", &version), "format version 2", &[]);
    loadvm(&p(&snap), "another machine", &["-m", "64M"]);
    loadvm("/nonexistent/demo.snap", "cannot read snapshot", &[]);
    for spec in ["5000", "x:f", "5:", ":f"] {
        assert_one_line_error(&["run", "--snapshot-at", spec], "--snapshot-at");
    }
    assert_one_line_error(
        &["run", "--snapshot-at", "100:/nonexistent/dir/s.snap"],
        "cannot write the snapshot",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_recorded_run_replays_and_bad_logs_are_refused() {
    let dir = std::env::temp_dir().join(format!("ox86-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let log = p(&dir.join("demo.log"));
    let run = |args: &[&str]| {
        let out = run_ox86(args, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        (text(&out.stdout), digests(&err).concat())
    };
    let rec = run(&["run", "--stats", "--record", &log]);
    let rep = run(&["run", "--stats", "--replay", &log]);
    assert_eq!(rep, rec, "the replay went elsewhere");
    let rep = run(&["run", "--stats", "--interp", "--replay", &log]);
    assert_eq!(rep, rec, "the interpreter's replay went elsewhere");
    let good = std::fs::read(&log).unwrap();
    let bad = |name: &str, bytes: &[u8]| {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        p(&f)
    };
    let mut version = good.clone();
    version[8] += 1;
    for (f, needle) in [
        (bad("cut", &good[..good.len() - 3]), "truncated or corrupt"),
        (bad("header", &good[..14]), "truncated or corrupt"),
        (bad("junk", b"junk"), "not an ox86 replay log"),
        (bad("version", &version), "format version 2"),
        (
            "/nonexistent/demo.log".to_string(),
            "cannot read replay log",
        ),
    ] {
        assert_one_line_error(&["run", "--replay", &f], needle);
    }
    assert_one_line_error(&["run", "-m", "64M", "--replay", &log], "another machine");
    assert_one_line_error(
        &["run", "--record", "/nonexistent/dir/x.log"],
        "cannot write the replay log",
    );
    assert_one_line_error(
        &["run", "--record", &log, "--replay", &log],
        "cannot be used",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stats_report_instructions_and_mips() {
    let out = run_ox86(
        &["run", "--stats", "--serial", "none"],
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("instructions in") && err.contains("MIPS"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "--serial none still printed");
}

/// Assembles a tiny Multiboot kernel (a.out kludge, loaded at 1 MiB) with nasm.
fn tiny_kernel(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ox86-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("k.asm");
    let out = dir.join("k.bin");
    let asm = format!(
        "bits 32\norg 0x100000\nmb: dd 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)\n\
         dd mb, mb, end, end, start\nstart:\n{body}\nend:\n"
    );
    std::fs::write(&src, asm).unwrap();
    let st = std::process::Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("nasm");
    assert!(st.success());
    out
}

#[test]
fn no_reboot_ends_on_reset_and_triple_fault() {
    // Fast reset through port 0x92.
    let k = tiny_kernel("reset", "mov al, 1\nout 0x92, al\njmp $");
    let out = run_ox86(
        &["run", "--kernel", k.to_str().unwrap(), "--no-reboot"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Triple fault: an empty IDT and a breakpoint.
    let k = tiny_kernel("triple", "lidt [idt]\nint3\njmp $\nidt: dw 0\ndd 0");
    let out = run_ox86(
        &["run", "--kernel", k.to_str().unwrap(), "--no-reboot"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Without --no-reboot the guest is rebooted (and resets again, until the limit).
    let out = run_ox86(
        &[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--max-insns",
            "100000",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("instruction limit"));
}

#[test]
fn serial_to_file_and_exit_status() {
    let k = tiny_kernel(
        "serial",
        "mov dx, 0x3f8\nmov al, 'h'\nout dx, al\nmov al, 'i'\nout dx, al\nmov al, 0x2a\nout 0xf4, al\njmp $",
    );
    let dir = std::env::temp_dir().join(format!("ox86-cli-{}-serialfile", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("com1.txt");
    let spec = format!("file:{}", f.display());
    let out = run_ox86(
        &["run", "--kernel", k.to_str().unwrap(), "--serial", &spec],
        Duration::from_secs(30),
    );
    // isa-debug-exit: status (0x2a << 1) | 1 = 85.
    assert_eq!(out.status.code(), Some(85), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hi");
}

/// A guest that echoes COM1 input back until it reads 'q', then exits with status 3.
const ECHO: &str = "mov dx, 0x3fd\npoll: in al, dx\ntest al, 1\njz poll\nmov dx, 0x3f8\nin al, dx\n\
                    cmp al, 'q'\nje done\nout dx, al\nmov dx, 0x3fd\njmp poll\ndone: mov al, 1\nout 0xf4, al\njmp $";

#[test]
fn console_input_reaches_the_guest() {
    let k = tiny_kernel("echo", ECHO);
    let out = run_ox86_input(
        &["run", "--kernel", k.to_str().unwrap()],
        Some(b"hello, guest\x01\x01!q"),
        Duration::from_secs(30),
    );
    // Ctrl-A Ctrl-A sends one Ctrl-A.
    assert_eq!(out.stdout, b"hello, guest\x01!");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn ctrl_a_c_opens_the_monitor() {
    let k = tiny_kernel("spin-monitor", "spin: jmp spin");
    let k = k.to_str().unwrap();
    let snap = std::env::temp_dir().join(format!("ox86-monitor-{}.snap", std::process::id()));
    let input = format!(
        "\x01cinfo registers\rx/1x 0x100000\rxp/4b 0x100000\rinfo tlb\rfrobnicate\r\
         savevm {}\rc\r\x01cicount\rquit\r",
        snap.display()
    );
    let out = run_ox86_input(
        &["run", "--kernel", k],
        Some(input.as_bytes()),
        Duration::from_secs(30),
    );
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}\n{}", text(&out.stderr));
    for want in [
        "ox86 monitor: the guest is paused",
        "EIP=001000",
        "CR0=60000011",
        "00100000: 1badb002",
        "00100000: 02 b0 ad 1b",
        "paging is off",
        "unknown command 'frobnicate'",
        "saved ",
    ] {
        assert!(so.contains(want), "no '{want}' in:\n{so}");
    }
    let at: u64 = so
        .lines()
        .find_map(|l| l.strip_prefix("icount="))
        .and_then(|v| v.trim().parse().ok())
        .expect("info registers gives the instruction count");
    // The snapshot resumes.
    let out = run_ox86(
        &[
            "run",
            "--kernel",
            k,
            "--loadvm",
            snap.to_str().unwrap(),
            "--max-insns",
            &(at + 1000).to_string(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    std::fs::remove_file(&snap).ok();
}

#[test]
fn ctrl_a_x_quits_at_any_moment() {
    let k = tiny_kernel("spin", "spin: jmp spin");
    let start = std::time::Instant::now();
    let out = run_ox86_input(
        &["run", "--kernel", k.to_str().unwrap()],
        Some(b"\x01x"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "quit took {:?}",
        start.elapsed()
    );
}
