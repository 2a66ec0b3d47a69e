//! Debian 12's i386 686 kernel with a busybox initramfs (scripts/fetch-guests), booted
//! through `ox86 run` as a user would: real commands run in the guest and their output
//! is checked against the same computations on the host; the boot log must hold no
//! complaint about the emulated hardware; `reboot -f` with --no-reboot ends with 0.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{engine_name, engines, linux_dir, run_ox86, text};

/// Runs `ox86 run` on the Debian kernel and initramfs with `append` and `extra`.
fn run_linux(append: &str, extra: &[&str]) -> std::process::Output {
    let d = linux_dir();
    let file = |n: &str| d.join(n).to_str().expect("UTF-8 path").to_string();
    let mut args: Vec<String> = ["run", "--kernel", &file("vmlinuz"), "--initrd"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(file("initramfs.cpio.gz"));
    for a in ["--append", append, "-m", "256M", "--no-reboot"]
        .iter()
        .chain(extra)
    {
        args.push(a.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ox86(&args, Duration::from_secs(600))
}

/// One boot at a time: guest time follows the host clock, and two boots (each with
/// its JIT compiler thread) on a 2-core host preempt each other enough to upset the
/// kernel's TSC calibration against the PIT.
static ONE_BOOT: Mutex<()> = Mutex::new(());

/// Boots with `ox86test=NAME` and returns the serial output.
fn boot(test: &str, engine: &[&str]) -> String {
    let _one = ONE_BOOT.lock().unwrap_or_else(|e| e.into_inner());
    let label = format!("{test} ({})", engine_name(engine));
    let out = run_linux(&format!("console=ttyS0 ox86test={test}"), engine);
    let so = text(&out.stdout);
    assert!(
        so.contains("OX86-TEST-PASS"),
        "{label}: no PASS\n{so}\n--- stderr:\n{}",
        text(&out.stderr)
    );
    assert!(
        so.contains("OX86-TEST-EXIT 0"),
        "{label}: test script failed\n{so}"
    );
    // reboot -f resets the machine; with --no-reboot that ends ox86 with status 0.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: exit status\n{so}\n--- stderr:\n{}",
        text(&out.stderr)
    );
    assert!(
        so.contains("reboot: Restarting system"),
        "{label}: did not reboot\n{so}"
    );
    so
}

/// Runs a host shell pipeline and returns its output, trimmed.
fn host(cmd: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("host shell");
    assert!(o.status.success(), "host command failed: {cmd}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The value printed after `ok   NAME: ` by the guest's test script.
fn reported<'a>(log: &'a str, name: &str) -> &'a str {
    let key = format!("ok   {name}: ");
    log.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no '{key}' line in:\n{log}"))
        .trim()
}

/// Kernel messages that would mean the emulated hardware misbehaved.
const COMPLAINTS: &[&str] = &[
    "unchecked MSR access",
    "Failed to access perfctr",
    "spurious 8259A interrupt",
    "unexpected IRQ",
    "TSC unstable",
    "Marking TSC unstable",
    "clocksource watchdog",
    "timekeeping watchdog",
    "calibration failed",
    "Fast TSC calibration failed",
    "IO-APIC + timer doesn't work",
    "PCI: Fatal",
    "PCI: Unknown",
    "BAR 0: failed",
    "i8042: Can't",
    "i8042: Failed",
    "serial8250: too much work",
    "BUG:",
    "WARNING:",
    "Oops",
    "invalid opcode",
    "general protection fault",
    "Call Trace",
    "Kernel panic",
];

#[test]
fn linux_smoke_and_quiet_boot_log() {
    for engine in engines() {
        let log = boot("smoke", engine);
        assert!(log.contains("Linux version 6.1.0"), "{log}");
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| COMPLAINTS.iter().any(|c| l.contains(c)))
            .collect();
        assert!(
            bad.is_empty(),
            "complaints in the boot log:\n{}",
            bad.join("\n")
        );
        assert_eq!(
            reported(&log, "md5sum"),
            host("echo 12345 | md5sum | cut -d' ' -f1")
        );
        assert_eq!(
            reported(&log, "sort"),
            host("seq 1 200 | sort -rn | head -3 | tr '\\n' ' '")
        );
        assert_eq!(
            reported(&log, "loop-sum"),
            (1..=1000).sum::<u32>().to_string()
        );
        assert_eq!(
            reported(&log, "awk"),
            (1..=100u32).map(|i| i * i).sum::<u32>().to_string()
        );
        assert_eq!(
            reported(&log, "sha256"),
            host("printf abc | sha256sum | cut -d' ' -f1")
        );
        assert!(log.contains("uname -r: 6.1.0-"), "{log}");
    }
}

#[test]
fn linux_c_program_matches_native() {
    for engine in engines() {
        let log = boot("cprog", engine);
        let start =
            log.find("OX86-CPROG-BEGIN\n").expect("begin marker") + "OX86-CPROG-BEGIN\n".len();
        let end = log.find("OX86-CPROG-END").expect("end marker");
        let native = Command::new(linux_dir().join("cprog"))
            .output()
            .expect("run cprog natively");
        assert!(native.status.success());
        assert_eq!(
            &log[start..end],
            text(&native.stdout),
            "guest and native outputs differ"
        );
    }
}

#[test]
fn linux_processes_and_files() {
    for engine in engines() {
        let log = boot("procs", engine);
        assert!(log.contains("ok   100 fork+exec"), "{log}");
        assert_eq!(
            reported(&log, "pipeline"),
            host("seq 1 5000 | grep 7 | sed 's/7/x/g' | tr x y | sort | uniq | wc -l")
        );
        let log = boot("fs", engine);
        assert!(log.contains("ok   gzip round trip"), "{log}");
        assert!(log.contains(&format!("ok   lines: {}", 200000)), "{log}");
    }
}

/// What a user does at the shell (the workload of scripts/bench-linux-session):
/// short-lived programs by the hundred, then compute; the compute phase's output must
/// equal the same static program run natively.
#[test]
fn linux_session_of_short_programs_and_compute() {
    let native = Command::new(linux_dir().join("cbench"))
        .output()
        .expect("run cbench natively");
    assert!(native.status.success());
    let native = text(&native.stdout);
    let tail: Vec<&str> = native.lines().rev().take(2).collect();
    for engine in engines() {
        let log = boot("session", engine);
        assert!(log.contains("OX86-SESSION-OK"), "{log}");
        let start = log.find("OX86-PHASE compute\n").expect("compute marker");
        let end = log.find("OX86-PHASE end").expect("end marker");
        let got: Vec<&str> = log[start..end].lines().rev().take(2).collect();
        assert_eq!(got, tail, "guest and native outputs differ");
    }
}

/// Runs ox86 on bad Linux input and checks for one clear line and a failure status.
fn assert_rejected(args: &[&str], needle: &str) {
    let out = run_ox86(args, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: want one line, got:\n{err}"
    );
    assert!(
        err.starts_with("ox86: ") && err.contains(needle),
        "{args:?}: '{needle}' not in: {err}"
    );
}

#[test]
fn bad_linux_input_gets_one_clear_line() {
    let d = linux_dir();
    let kernel = std::fs::read(d.join("vmlinuz")).unwrap();
    let tmp = std::env::temp_dir().join(format!("ox86-linux-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let truncated = tmp.join("truncated");
    std::fs::write(&truncated, &kernel[..kernel.len() / 2]).unwrap();
    let mut bad = kernel.clone();
    bad[0x1f1] = 0xff; // setup_sects: the protected-mode kernel would start past the file
    let corrupt = tmp.join("corrupt");
    std::fs::write(&corrupt, &bad).unwrap();
    let big = tmp.join("big-initrd");
    std::fs::write(&big, vec![0u8; 60 << 20]).unwrap();
    let k = d.join("vmlinuz");
    let k = k.to_str().unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    assert_rejected(&["run", "--kernel", &p(&truncated)], "");
    assert_rejected(&["run", "--kernel", &p(&corrupt)], "");
    assert_rejected(&["run", "--kernel", k, "-m", "16M"], "RAM too small");
    assert_rejected(
        &["run", "--kernel", k, "-m", "64M", "--initrd", &p(&big)],
        "does not fit",
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// The kernel's boot in lockstep: the JIT run and an interpreter-only run compared
/// after every slice (registers, flags, segments, x87 state, instruction count, and
/// all of RAM every 64 slices), for the 6 G instructions up to the start of /init.
/// The whole boot through the shell tests takes 75 s in lockstep; it is run by hand
/// (`ox86 run --lockstep ...`, see the JIT issue's notes), not here.
#[test]
fn linux_boot_in_lockstep() {
    let _one = ONE_BOOT.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_linux(
        "console=ttyS0 ox86test=smoke",
        &["--lockstep", "--max-insns", "6000000000"],
    );
    let so = text(&out.stdout);
    let se = text(&out.stderr);
    assert!(so.contains("Linux version 6.1.0"), "{so}");
    assert!(
        so.contains("Trying to unpack rootfs"),
        "boot did not get far:\n{so}"
    );
    assert!(
        se.contains("instruction limit reached") && !se.contains("lockstep"),
        "lockstep run:\n{se}"
    );
}

/// The lines of `--stats` and `--hash-every` that give digests of the machine state.
fn digest_lines(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("ox86 digest: "))
        .collect()
}

/// Under --icount a boot repeats byte for byte and ends in the same state whatever
/// the JIT does: compiling everything at once (--jit-threshold 1), its code coming
/// late (each compilation delayed 3 ms, with a fresh translation cache), or its code
/// memory freed over and over (1 MiB of it: about 90 generations freed), on a host
/// busy with other tests; a snapshot the first run takes on the way resumes to the
/// same end. No RTC base is given: the guest's clock starts at the fixed
/// date of icount runs.
#[test]
fn linux_icount_boots_repeat_whatever_the_jit_does() {
    let cache = std::env::temp_dir().join(format!("ox86-icount-cache-{}", std::process::id()));
    let cache_arg = cache.to_str().unwrap().to_string();
    let snap = cache.with_extension("snap");
    let snap_at = format!("3000000000:{}", snap.to_str().unwrap());
    let runs: [&[&str]; 4] = [
        &["--jit-cache", "off", "--snapshot-at", &snap_at],
        &["--jit-cache", "off", "--jit-threshold", "1"],
        &["--jit-cache", &cache_arg, "--jit-compile-delay", "3000"],
        &["--jit-cache", "off", "--jit-code-memory", "1M"],
    ];
    let mut first: Option<(String, Vec<String>)> = None;
    for extra in runs {
        let mut args = vec!["--icount", "--stats"];
        args.extend_from_slice(extra);
        let out = run_linux("console=ttyS0 ox86test=procs", &args);
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert!(
            so.contains("OX86-TEST-EXIT 0") && out.status.success(),
            "{extra:?}:\n{so}\n--- stderr:\n{se}"
        );
        assert!(
            so.contains("setting system clock to 2024-01-01T00:00:0"),
            "{extra:?}: the RTC did not start at the icount date\n{so}"
        );
        let d: Vec<String> = digest_lines(&se).iter().map(|s| s.to_string()).collect();
        assert_eq!(d.len(), 1, "{extra:?}: {se}");
        if extra.contains(&"1M") {
            let freed = se
                .split(" generations freed")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok());
            assert!(freed.is_some_and(|n| n >= 10), "{extra:?}: {se}");
        }
        match &first {
            None => first = Some((so, d)),
            Some((so1, d1)) => {
                assert_eq!(&d, d1, "{extra:?}: another final state");
                assert!(
                    so == *so1,
                    "{extra:?}: other serial output:\n{so}\n--- first:\n{so1}"
                );
            }
        }
    }
    // The snapshot the first run took mid-boot (in the kernel's initcalls) resumes to
    // the same end: the rest of the output, the same final state.
    let (so1, d1) = first.expect("runs");
    let out = run_linux(
        "console=ttyS0 ox86test=procs",
        &["--icount", "--stats", "--loadvm", snap.to_str().unwrap()],
    );
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "resumed: {se}");
    assert!(
        so.len() > 1000 && so1.ends_with(&so),
        "resumed: not the rest of the output\n{so}"
    );
    assert_eq!(digest_lines(&se), d1, "resumed: another final state");
    std::fs::remove_dir_all(&cache).ok();
    std::fs::remove_file(&snap).ok();
}

/// The interpreter alone goes through the JIT's states, digest for digest, from the
/// kernel's decompressor to the RTC's registration (3.5 G instructions, with the RTC
/// at a date given in QEMU's spelling).
#[test]
fn linux_icount_interpreter_and_jit_agree_digest_for_digest() {
    let run = |engine: &[&str]| {
        let mut args = vec![
            "--icount",
            "--stats",
            "--rtc",
            "base=2006-06-17T16:01:21",
            "--max-insns",
            "3500000000",
            "--hash-every",
            "500000000",
            "--jit-cache",
            "off",
        ];
        args.extend_from_slice(engine);
        let out = run_linux("console=ttyS0 ox86test=smoke", &args);
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert!(se.contains("instruction limit reached"), "{engine:?}: {se}");
        let d: Vec<String> = digest_lines(&se).iter().map(|s| s.to_string()).collect();
        (so, d, se)
    };
    let (so_jit, d_jit, se) = run(&[]);
    assert!(
        so_jit.contains("setting system clock to 2006-06-17T16:01:2"),
        "the RTC did not start at the given date\n{so_jit}"
    );
    // Seven periodic digests, then --stats's at the limit (the same state as the last).
    assert_eq!(d_jit.len(), 8, "{se}");
    assert!(d_jit[6].ends_with("at instruction 3500000000"), "{se}");
    let (so_int, d_int, _) = run(&["--interp"]);
    assert_eq!(d_int, d_jit, "the interpreter went through other states");
    assert!(
        so_int == so_jit,
        "other serial output:\n{so_int}\n--- JIT:\n{so_jit}"
    );
}

/// Boots to the initramfs's shell with `extra`, types `lines` one at a time (each two
/// seconds after the output so far contains its cue), and returns the output once
/// ox86 exits.
fn shell_session(extra: &[&str], lines: &[(&str, &str)]) -> std::process::Output {
    use std::io::{Read, Write};
    let d = linux_dir();
    let file = |n: &str| d.join(n).to_str().expect("UTF-8 path").to_string();
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        file("vmlinuz"),
        "--initrd".into(),
        file("initramfs.cpio.gz"),
        "--append".into(),
        "console=ttyS0".into(),
        "-m".into(),
        "256M".into(),
        "--no-reboot".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = common::ox86_command()
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ox86");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    for (cue, line) in lines {
        while !String::from_utf8_lossy(&seen).contains(cue) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.extend(b),
                Err(_) => {
                    let _ = child.kill();
                    panic!("no '{cue}' in:\n{}", String::from_utf8_lossy(&seen));
                }
            }
        }
        // A person's pause: the guest idles meanwhile (under --icount it runs its
        // timer ticks at once), so that checks of the state fall between the lines.
        std::thread::sleep(Duration::from_secs(2));
        stdin.write_all(line.as_bytes()).expect("type");
        stdin.flush().expect("flush");
    }
    while let Ok(b) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        seen.extend(b);
    }
    let status = child.wait().expect("wait");
    reader.join().ok();
    drop(stdin);
    std::process::Output {
        status,
        stdout: seen,
        stderr: err.join().unwrap_or_default(),
    }
}

/// A shell session typed on the console, recorded, replays with the same output and
/// final state without any input from the host; the log costs kilobytes; a log whose
/// typed input was altered diverges, and the replay names the first check after the
/// altered input (10 M instructions after it).
#[test]
fn linux_recorded_session_replays_and_an_altered_log_diverges() {
    let log = std::env::temp_dir().join(format!("ox86-session-{}.log", std::process::id()));
    let log_s = log.to_str().unwrap().to_string();
    let rec = shell_session(
        &["--record", &log_s, "--stats", "--jit-cache", "off"],
        &[
            ("/ # ", "echo hello-$((6*7))\n"),
            ("hello-42", "reboot -f\n"),
        ],
    );
    let (so, se) = (text(&rec.stdout), text(&rec.stderr));
    assert!(rec.status.success(), "record: {se}");
    assert!(so.contains("\nhello-42\n"), "record:\n{so}");
    let d = digest_lines(&se);
    assert_eq!(d.len(), 1, "{se}");
    let bytes = std::fs::read(&log).unwrap();
    assert!(bytes.len() < 64 << 10, "the log is {} bytes", bytes.len());
    let (_, events) = ox86::replay::parse(&bytes).expect("a good log");
    let typed: Vec<(u64, Vec<u8>)> = events
        .iter()
        .filter_map(|e| match e {
            ox86::replay::Event::Console { icount, bytes, .. } => Some((*icount, bytes.clone())),
            _ => None,
        })
        .collect();
    assert!(!typed.is_empty(), "no input logged");

    let args = |f: &str| {
        [
            "--replay",
            f,
            "--stats",
            "--jit-cache",
            "off",
            "--jit-threshold",
            "50",
        ]
        .map(String::from)
    };
    let a = args(&log_s);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let rep = run_linux("console=ttyS0", &a);
    let (so2, se2) = (text(&rep.stdout), text(&rep.stderr));
    assert!(rep.status.success(), "replay: {se2}");
    assert!(so2 == so, "replay: other output:\n{so2}");
    assert_eq!(digest_lines(&se2), d, "replay: another final state");

    // 6*7 becomes 7*7 in the log: the guest prints hello-49, and the replay stops.
    let k = bytes
        .windows(3)
        .position(|w| w == b"6*7")
        .expect("the typed line is in the log");
    let mut altered = bytes.clone();
    altered[k] = b'7';
    let bad = log.with_extension("altered");
    std::fs::write(&bad, &altered).unwrap();
    let a = args(bad.to_str().unwrap());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let rep = run_linux("console=ttyS0", &a);
    let (so3, se3) = (text(&rep.stdout), text(&rep.stderr));
    assert!(
        !rep.status.success() && so3.contains("hello-49"),
        "{so3}\n{se3}"
    );
    let at = typed
        .iter()
        .find(|(_, b)| b.windows(3).any(|w| w == b"6*7"))
        .map(|(i, _)| *i)
        .expect("the altered input's count");
    // The first check after the altered input: 10^7 instructions after it, or the
    // periodic one at the next multiple of 10^9 if that comes first.
    let check = (at + ox86::replay::CHECK_AFTER_INPUT)
        .min((at / ox86::replay::CHECK_EVERY + 1) * ox86::replay::CHECK_EVERY);
    let want = format!("ox86: replay diverged at instruction {check}: ");
    assert!(
        se3.lines().any(|l| l.starts_with(&want)),
        "want '{want}' in:\n{se3}"
    );
    std::fs::remove_file(&log).ok();
    std::fs::remove_file(&bad).ok();
}

/// The monitor on a running kernel: Ctrl-A c at the shell, the page tables' mappings,
/// the kernel's first instructions read through paging and physically (the same
/// words), the registers, then quit.
#[test]
fn monitor_reads_the_kernel_through_its_page_tables() {
    let out = shell_session(
        &["--jit-cache", "off"],
        &[(
            "/ # ",
            "\x01cinfo tlb\rx/4x 0xc1000000\rxp/4x 0x1000000\rinfo registers\rquit\r",
        )],
    );
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}\n{}", text(&out.stderr));
    assert!(
        so.lines()
            .any(|l| l.starts_with("c0000000-") && l.contains("rw kernel")),
        "no kernel mapping at 0xc0000000:\n{so}"
    );
    // Each reply follows the prompt on its line.
    let words = |prefix: &str| {
        so.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, w)| w))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no '{prefix}' line:\n{so}"))
    };
    let (virt, phys) = (words("c1000000:"), words("01000000:"));
    assert_eq!(virt, phys, "paging does not map 0xc1000000 to 0x1000000");
    assert_eq!(virt.split_whitespace().count(), 4);
    assert!(so.contains("CR0=8"), "paging on:\n{so}");
}
