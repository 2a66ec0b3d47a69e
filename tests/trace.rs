//! Instruction traces (`ox86 run --trace`, `ox86 trace ...`): the JIT and the
//! interpreter write the same file; `dump` shows what single steps of the
//! interpreter run, instruction for instruction; windows, replays, damaged files and a
//! full disk.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use ox86::trace::{Record, TraceReader};
use ox86::{ExitReason, Machine, MachineBuilder, SerialOut};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ox86-trace-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d.join(name)
}

/// `--stats`'s instruction count in `stderr`.
fn stats_count(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ox86 stats: "))
        .unwrap_or_else(|| panic!("no stats line in:\n{stderr}"));
    line["ox86 stats: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("instruction count")
}

/// Instructions a trace holds, read record by record.
fn trace_count(path: &Path) -> u64 {
    let mut r = TraceReader::open(path).expect("trace");
    while r.next_record().expect("record").is_some() {}
    let end = r.end().expect("end record");
    assert!(!end.stopped_early);
    end.instructions
}

/// Runs `args` with `--trace path --stats`; returns the run's instruction count.
fn traced_run(args: &[&str], path: &Path) -> u64 {
    let mut all: Vec<&str> = vec!["run", "--serial", "none", "--stats", "--jit-cache", "off"];
    all.extend_from_slice(args);
    let p = path.to_str().expect("utf-8 path");
    all.extend_from_slice(&["--trace", p]);
    let out = common::run_ox86(&all, Duration::from_secs(300));
    let err = common::text(&out.stderr);
    assert!(
        out.status.code().is_some(),
        "ox86 {all:?} was killed:\n{err}"
    );
    stats_count(&err)
}

#[test]
fn the_jit_and_the_interpreter_write_the_same_trace() {
    let g = common::guests_dir();
    let guests: Vec<Vec<String>> = vec![
        vec![],
        vec![
            "--kernel".into(),
            g.join("gdbdemo.elf").display().to_string(),
        ],
        vec!["--kernel".into(), g.join("c.elf").display().to_string()],
    ];
    for guest in guests {
        let guest: Vec<&str> = guest.iter().map(String::as_str).collect();
        let mut files = Vec::new();
        for (k, engine) in [
            &["--icount"][..],
            &["--icount", "--jit-threshold", "1"],
            &["--icount", "--interp"],
        ]
        .iter()
        .enumerate()
        {
            let path = tmp(&format!("same-{k}.trc"));
            let args: Vec<&str> = guest.iter().chain(engine.iter()).copied().collect();
            let n = traced_run(&args, &path);
            // Every instruction of the run is in the trace.
            assert_eq!(trace_count(&path), n, "{args:?}");
            files.push(std::fs::read(&path).expect("trace"));
        }
        assert!(files[0].len() > 100);
        assert!(files[0] == files[1], "{guest:?}: JIT traces differ");
        assert!(
            files[0] == files[2],
            "{guest:?}: JIT and interpreter traces differ"
        );
    }
}

/// The formatter `ox86 trace dump` uses.
fn formatter() -> IntelFormatter {
    let mut f = IntelFormatter::new();
    f.options_mut().set_first_operand_char_index(8);
    f
}

/// What single steps of the interpreter run in `[from, to)`: instruction count,
/// linear address and disassembly of each instruction retired, in `dump`'s format.
fn single_steps(m: &mut Machine, from: u64, to: u64) -> Vec<String> {
    let r = m.run_until(Some(from), None).expect("run");
    assert_eq!(r, ExitReason::Reached);
    let mut fmt = formatter();
    let mut v = Vec::new();
    while m.icount() < to {
        let before = m.icount();
        let lin = m.pc_linear();
        let s = &m.cpu().state;
        let (eip, bits) = (
            s.rip,
            if s.seg[ox86::cpu::state::CS].big() {
                32
            } else {
                16
            },
        );
        let mut bytes = [0u8; 15];
        let n = m.read_virtual(lin, &mut bytes);
        match m.step().expect("step") {
            // The last instruction of the program writes the exit port.
            ExitReason::Stepped | ExitReason::GuestExit(_) => {}
            r => panic!("step at {before} ended {r:?}"),
        }
        if m.icount() == before + 1 {
            let mut d = Decoder::with_ip(bits, &bytes[..n], eip, DecoderOptions::NONE);
            let i = d.decode();
            let mut t = String::new();
            fmt.format(&i, &mut t);
            v.push(format!("{before:>12}  {lin:08x}  {t}"));
        }
    }
    v
}

/// The instruction lines of `ox86 trace dump` over `[from, to)`.
fn dump(path: &Path, from: u64, to: u64) -> Vec<String> {
    let out = common::run_ox86(
        &[
            "trace",
            "dump",
            path.to_str().expect("path"),
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    common::text(&out.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(str::to_string)
        .collect()
}

#[test]
fn dump_shows_what_single_steps_of_the_interpreter_run() {
    let image = std::fs::read(common::guests_dir().join("c.elf")).expect("c.elf");
    let path = tmp("steps.trc");
    // Traced with the JIT.
    let n = traced_run(
        &[
            "--kernel",
            common::guests_dir().join("c.elf").to_str().expect("path"),
            "--icount",
        ],
        &path,
    );
    for (from, to) in [(0, 3000), (5_000_000, 5_004_000), (n - 2000, n)] {
        let mut m = MachineBuilder::new()
            .serial(SerialOut::None)
            .kernel(image.clone(), String::new(), None)
            .icount(0)
            .jit(None)
            .build()
            .expect("machine");
        let want = single_steps(&mut m, from, to);
        let got = dump(&path, from, to);
        assert_eq!(want.len() as u64, to - from);
        assert_eq!(got, want, "window {from}..{to}");
    }
}

#[test]
fn a_window_of_a_replayed_run_is_the_window_of_the_run() {
    let g = common::guests_dir().join("c.elf");
    let g = g.to_str().expect("path");
    let log = tmp("c.log");
    let out = common::run_ox86(
        &[
            "run",
            "--serial",
            "none",
            "--kernel",
            g,
            "--record",
            log.to_str().expect("path"),
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.code().is_some());
    let (from, to) = ("1000000", "1250000");
    let direct = tmp("window-direct.trc");
    traced_run(
        &[
            "--kernel",
            g,
            "--icount",
            "--trace-from",
            from,
            "--trace-to",
            to,
        ],
        &direct,
    );
    let replayed = tmp("window-replay.trc");
    traced_run(
        &[
            "--kernel",
            g,
            "--replay",
            log.to_str().expect("path"),
            "--trace-from",
            from,
            "--trace-to",
            to,
        ],
        &replayed,
    );
    assert_eq!(trace_count(&direct), 250_000);
    let mut r = TraceReader::open(&direct).expect("trace");
    assert_eq!(r.header().start, 1_000_000);
    let first = loop {
        match r.next_record().expect("record") {
            Some(Record::Block { icount, .. }) => break icount,
            Some(_) => {}
            None => panic!("no block"),
        }
    };
    assert_eq!(first, 1_000_000);
    assert!(
        std::fs::read(&direct).expect("trace") == std::fs::read(&replayed).expect("trace"),
        "the replay's window differs"
    );
}

/// Reads a whole trace from bytes: Ok(instructions) or the error.
fn read_all(bytes: &[u8]) -> Result<u64, String> {
    let mut r = TraceReader::new(Box::new(std::io::Cursor::new(bytes.to_vec())))
        .map_err(|e| e.to_string())?;
    loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(r.end().map_or(0, |e| e.instructions)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn damaged_traces_are_refused_with_one_line() {
    let path = tmp("whole.trc");
    traced_run(
        &[
            "--kernel",
            common::guests_dir()
                .join("gdbdemo.elf")
                .to_str()
                .expect("path"),
            "--icount",
            "--max-insns",
            "400000",
        ],
        &path,
    );
    let whole = std::fs::read(&path).expect("trace");
    assert_eq!(read_all(&whole), Ok(400_000));
    // Every truncation, every flipped byte: an error, never a panic or a wrong count.
    for cut in 0..whole.len() {
        let e = read_all(&whole[..cut]).expect_err("a truncated trace reads whole");
        assert!(!e.contains('\n'), "{e}");
    }
    for at in 0..whole.len() {
        let mut b = whole.clone();
        b[at] ^= 0x20;
        assert!(read_all(&b).is_err(), "flipped byte {at} went unnoticed");
    }
    // The commands: one line on stderr and a failure.
    let cut = tmp("cut.trc");
    std::fs::write(&cut, &whole[..whole.len() / 2]).expect("write");
    let garbage = tmp("garbage.trc");
    std::fs::write(&garbage, b"not a trace at all, just some text\n").expect("write");
    for f in [&cut, &garbage, &tmp("missing.trc")] {
        for cmd in ["info", "dump"] {
            let out = common::run_ox86(
                &["trace", cmd, f.to_str().expect("path")],
                Duration::from_secs(30),
            );
            let err = common::text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {f:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{cmd} {f:?}: {err}");
            assert!(err.starts_with("ox86: "), "{err}");
        }
    }
    let out = common::run_ox86(
        &["trace", "info", cut.to_str().expect("path")],
        Duration::from_secs(30),
    );
    assert!(
        common::text(&out.stderr).contains("truncated"),
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn a_full_disk_ends_the_run_and_leaves_a_valid_trace() {
    let path = tmp("full.trc");
    let _ = std::fs::remove_file(&path);
    let g = common::guests_dir().join("c.elf");
    // At most 64 KiB per file: the trace's writes fail part way, as on a full disk.
    let script = format!(
        "ulimit -f 64; trap '' XFSZ; exec \"$0\" run --serial none --icount --jit-cache off --kernel {} --trace {}",
        g.display(),
        path.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(common::ox86_bin())
        .output()
        .expect("sh");
    let err = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("trace") && err.contains("File too large"),
        "{err}"
    );
    // Valid up to where it stopped, and says so.
    let mut r = TraceReader::open(&path).expect("trace");
    while r.next_record().expect("a valid trace").is_some() {}
    let end = *r.end().expect("end record");
    assert!(end.stopped_early);
    assert!(end.instructions > 100_000, "{end:?}");
    let out = common::run_ox86(
        &["trace", "info", path.to_str().expect("path")],
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    assert!(common::text(&out.stdout).contains("stopped early"));
}

#[test]
fn a_linux_boot_traced_by_the_jit_is_what_single_steps_run() {
    let dir = common::linux_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    let append = "console=ttyS0 ox86test=smoke";
    let path = tmp("linux.trc");
    let n = traced_run(
        &[
            "--kernel",
            kernel.to_str().expect("path"),
            "--initrd",
            initrd.to_str().expect("path"),
            "--append",
            append,
            "-m",
            "256M",
            "--no-reboot",
            "--icount",
        ],
        &path,
    );
    // Every instruction of the boot is in the trace.
    assert_eq!(trace_count(&path), n);
    assert!(n > 1_000_000_000, "{n}");
    // Interrupts, exceptions (page faults of the first processes), CR3 switches and
    // user mode are all in it.
    let mut r = TraceReader::open(&path).expect("trace");
    let (mut ints, mut pfs, mut cr3s, mut user) = (0, 0, std::collections::HashSet::new(), 0);
    while let Some(rec) = r.next_record().expect("record") {
        match rec {
            Record::Interrupt { .. } => ints += 1,
            Record::Exception { vector: 14, .. } => pfs += 1,
            Record::Context { cr3, cpl, .. } => {
                cr3s.insert(cr3);
                user += u64::from(cpl == 3);
            }
            _ => {}
        }
    }
    assert!(
        ints > 100 && pfs > 100 && cr3s.len() > 3 && user > 10,
        "{ints} {pfs} {cr3s:?} {user}"
    );
    let image = std::fs::read(&kernel).expect("kernel");
    let initrd = std::fs::read(&initrd).expect("initrd");
    // Windows at the start, in the middle, and among the first processes (user mode,
    // page faults, timer interrupts), each stepped from a machine the JIT ran there.
    for from in [0, n / 3, n - 30_000_000] {
        let to = from + 5000;
        let mut m = MachineBuilder::new()
            .ram_size(256 << 20)
            .serial(SerialOut::None)
            .kernel(image.clone(), append.to_string(), Some(initrd.clone()))
            .no_reboot(true)
            .icount(0)
            .build()
            .expect("machine");
        let want = single_steps(&mut m, from, to);
        let got = dump(&path, from, to);
        assert_eq!(got, want, "window {from}..{to}");
    }
}
