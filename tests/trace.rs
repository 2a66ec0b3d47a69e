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
    for (guest, mem) in guests
        .iter()
        .flat_map(|g| [(g, &[][..]), (g, &["--trace-mem"][..])])
    {
        let guest: Vec<&str> = guest
            .iter()
            .map(String::as_str)
            .chain(mem.iter().copied())
            .collect();
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

/// An access as the trace records it: linear address, size, write, value.
type Access = (u64, u8, bool, u64);

/// The memory accesses of the instructions in `[from, to)` of trace `path` (not those
/// of deliveries), by instruction count, and the linear address of each instruction.
fn trace_accesses(
    path: &Path,
    from: u64,
    to: u64,
) -> (
    std::collections::HashMap<u64, Vec<Access>>,
    std::collections::HashMap<u64, u64>,
) {
    let mut r = TraceReader::open(path).expect("trace");
    assert!(r.has_memory());
    let (mut acc, mut at) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    while let Some(rec) = r.next_record().expect("record") {
        match rec {
            Record::Mem { icount, access: a } if !a.delivery && (from..to).contains(&icount) => acc
                .entry(icount)
                .or_insert_with(Vec::new)
                .push((a.lin, a.size, a.write, a.value)),
            Record::Block { id, icount } => {
                let d = r.def(id).clone();
                for (k, i) in d.decode().iter().enumerate() {
                    at.insert(
                        icount + k as u64,
                        d.cs_base.wrapping_add(i.ip()) & 0xffff_ffff,
                    );
                }
            }
            _ => {}
        }
    }
    (acc, at)
}

/// Steps `m` (an interpreter stopped at `from`) to `to` and checks each instruction's
/// recorded memory accesses against what iced says its operands and implied stack
/// accesses are, at the registers before it, with each read's value the memory before
/// the instruction and each write's the memory after. Returns the instructions checked.
fn check_accesses(m: &mut Machine, path: &Path, from: u64, to: u64) -> usize {
    use iced_x86::{InstructionInfoFactory, Mnemonic, OpAccess, Register};
    let (acc, at) = trace_accesses(path, from, to);
    let r = m.run_until(Some(from), None).expect("run");
    assert_eq!(r, ExitReason::Reached);
    let mut info = InstructionInfoFactory::new();
    let (mut checked, mut accesses) = (0, 0);
    while m.icount() < to {
        let before = m.icount();
        let lin = m.pc_linear();
        let s = m.cpu().state.clone();
        let big = s.seg[ox86::cpu::state::CS].big();
        let mut bytes = [0u8; 15];
        let n = m.read_virtual(lin, &mut bytes);
        let mut d = Decoder::with_ip(
            if big { 32 } else { 16 },
            &bytes[..n],
            s.rip,
            DecoderOptions::NONE,
        );
        let insn = d.decode();
        // What iced says the instruction accesses (8-byte pieces, as traces record).
        let reg = |r: Register, _: usize, _: usize| -> Option<u64> {
            use ox86::cpu::state::{CS, DS, ES, FS, GS, SS};
            let seg = |k: usize| Some(s.seg[k].base);
            match r {
                Register::ES => seg(ES),
                Register::CS => seg(CS),
                Register::SS => seg(SS),
                Register::DS => seg(DS),
                Register::FS => seg(FS),
                Register::GS => seg(GS),
                Register::None => Some(0),
                _ => {
                    let full = r.full_register32();
                    let k = (full as usize).checked_sub(Register::EAX as usize)?;
                    let v = *s.regs.get(k)?;
                    Some(match r.size() {
                        1 if r.number() >= 4 && r.number() < 8 && !full.is_gpr32() => v >> 8 & 0xff,
                        1 => v & 0xff,
                        2 => v & 0xffff,
                        _ => v & 0xffff_ffff,
                    })
                }
            }
        };
        let mut want: Vec<(u64, u8, bool)> = Vec::new();
        let mut plain = !matches!(
            insn.mnemonic(),
            // Descriptor tables, task state, frames of far transfers: accesses iced
            // does not list.
            Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Into
                | Mnemonic::Retf | Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs
                | Mnemonic::Lss | Mnemonic::Ltr | Mnemonic::Lldt | Mnemonic::Lar | Mnemonic::Lsl
                | Mnemonic::Verr | Mnemonic::Verw | Mnemonic::Sysenter | Mnemonic::Sysexit
                | Mnemonic::Enter
                // The pseudo-descriptor's limit and base: two accesses here.
                | Mnemonic::Lgdt | Mnemonic::Lidt | Mnemonic::Sgdt | Mnemonic::Sidt
                // The ESP slot is read (and dropped) here; iced leaves it out.
                | Mnemonic::Popa | Mnemonic::Popad
        ) && !insn.is_jmp_far()
            && !insn.is_call_far()
            && !insn.is_jmp_far_indirect()
            && !insn.is_call_far_indirect()
            && !insn.has_rep_prefix()
            && !insn.has_repne_prefix()
            && !(insn.op0_kind() == iced_x86::OpKind::Register
                && insn.op0_register().is_segment_register());
        for u in info.info(&insn).used_memory() {
            let Some(a) = u.virtual_address(0, reg) else {
                plain = false;
                continue;
            };
            let size = u.memory_size().size() as u64;
            let (r, w) = match u.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false),
                OpAccess::Write => (false, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                OpAccess::NoMemAccess => (false, false),
                _ => {
                    plain = false;
                    (false, false)
                }
            };
            for (flag, write) in [(r, false), (w, true)] {
                if !flag {
                    continue;
                }
                let mut off = 0;
                while off < size {
                    let n = (size - off).min(8);
                    want.push(((a + off) & 0xffff_ffff, n as u8, write));
                    off += n;
                }
            }
        }
        // Reads see the memory before the instruction.
        let mem_before: Vec<u64> = want
            .iter()
            .map(|&(a, n, _)| {
                let mut b = [0u8; 8];
                m.read_virtual(a, &mut b[..usize::from(n)]);
                u64::from_le_bytes(b)
            })
            .collect();
        match m.step().expect("step") {
            ExitReason::Stepped | ExitReason::GuestExit(_) => {}
            r => panic!("step at {before} ended {r:?}"),
        }
        // Only instructions that completed, as the trace ran them (no interrupt came
        // first).
        if m.icount() != before + 1 || at.get(&before) != Some(&lin) || !plain {
            continue;
        }
        let got = acc.get(&before).cloned().unwrap_or_default();
        let mut g: Vec<(u64, u8, bool)> = got.iter().map(|&(a, n, w, _)| (a, n, w)).collect();
        let mut w2 = want.clone();
        g.sort_unstable();
        w2.sort_unstable();
        let text = format!("{before}: {insn} at {lin:#x}: recorded {got:x?}, iced {want:x?}");
        assert_eq!(g, w2, "{text}");
        for &(a, n, write, value) in &got {
            let k = want
                .iter()
                .position(|&(b, m2, w)| (b, m2, w) == (a, n, write))
                .expect("matched");
            let expect = if write {
                let mut b = [0u8; 8];
                m.read_virtual(a, &mut b[..usize::from(n)]);
                u64::from_le_bytes(b)
            } else {
                mem_before[k]
            };
            // A read of what the instruction itself writes after (XCHG, RMW) is
            // still the value before.
            assert_eq!(value, expect, "{text}: value at {a:#x}");
        }
        checked += 1;
        accesses += got.len();
    }
    assert!(accesses > 0, "no access checked in {from}..{to}");
    checked
}

#[test]
fn memory_accesses_are_what_the_instructions_access() {
    let elf = common::guests_dir().join("c.elf");
    let image = std::fs::read(&elf).expect("c.elf");
    let path = tmp("mem.trc");
    let n = traced_run(
        &[
            "--kernel",
            elf.to_str().expect("path"),
            "--icount",
            "--trace-mem",
        ],
        &path,
    );
    assert_eq!(trace_count(&path), n);
    for (from, to) in [(0, 20_000), (5_000_000, 5_020_000), (n - 20_000, n)] {
        let mut m = bare_metal_interpreter(&image);
        let checked = check_accesses(&mut m, &path, from, to);
        assert!(
            checked > 15_000,
            "{checked} instructions checked in {from}..{to}"
        );
    }
}

/// A machine that runs bare-metal ELF `image` in the interpreter, under `--icount`.
fn bare_metal_interpreter(image: &[u8]) -> Machine {
    MachineBuilder::new()
        .serial(SerialOut::None)
        .kernel(image.to_vec(), String::new(), None)
        .icount(0)
        .jit(None)
        .build()
        .expect("machine")
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
        let mut m = bare_metal_interpreter(&image);
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
    // nokaslr: the kernel where its System.map says.
    let append = "console=ttyS0 ox86test=smoke nokaslr";
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
    // Memory accesses among the first processes (user and kernel mode, paging, page
    // faults), traced in a window.
    let (from, to) = (n - 30_000_000, n - 29_980_000);
    let mem = tmp("linux-mem.trc");
    let (f, t) = (from.to_string(), to.to_string());
    traced_run(
        &[
            "--kernel",
            kernel.to_str().expect("path"),
            "--initrd",
            dir.join("initramfs.cpio.gz").to_str().expect("path"),
            "--append",
            append,
            "-m",
            "256M",
            "--no-reboot",
            "--icount",
            "--trace-mem",
            "--trace-from",
            &f,
            "--trace-to",
            &t,
        ],
        &mem,
    );
    let mut m = MachineBuilder::new()
        .ram_size(256 << 20)
        .serial(SerialOut::None)
        .kernel(image, append.to_string(), Some(initrd))
        .no_reboot(true)
        .icount(0)
        .build()
        .expect("machine");
    let checked = check_accesses(&mut m, &mem, from, to);
    assert!(checked > 10_000, "{checked} instructions checked");
}

/// The Python with DuckDB that scripts/test installs (target/pyenv), or `OX86_PYTHON`.
fn duckdb_python() -> PathBuf {
    let p = std::env::var_os("OX86_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("target/pyenv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: scripts/test installs DuckDB's Python package there",
        p.display()
    );
    p
}

/// Runs a DuckDB query in Python; returns its rows, one per line, fields separated by
/// tabs.
fn duckdb(sql: &str) -> Vec<String> {
    let script = format!(
        "import duckdb\nfor r in duckdb.sql({sql:?}).fetchall():\n    print('\\t'.join(str(x) for x in r))\n"
    );
    let out = std::process::Command::new(duckdb_python())
        .arg("-c")
        .arg(script)
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    common::text(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `ox86 trace ...` with `args`; its standard output (it must succeed).
fn trace_cmd(args: &[&str]) -> String {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    let out = common::run_ox86(&all, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{all:?}: {}",
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

/// Lines "count  percent%  name" of the table after `title` in a stats or hot report.
fn table(report: &str, title: &str) -> Vec<(u64, String)> {
    report
        .lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next().and_then(|n| n.parse().ok()).expect("count");
            let _pct = w.next();
            (n, w.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

#[test]
fn duckdb_counts_the_memory_accesses_stats_counts() {
    let elf = common::guests_dir().join("c.elf");
    let path = tmp("export-mem.trc");
    let p = path.to_str().expect("path");
    traced_run(
        &[
            "--kernel",
            elf.to_str().expect("path"),
            "--icount",
            "--trace-mem",
            "--trace-to",
            "3000000",
        ],
        &path,
    );
    let stats = trace_cmd(&["stats", p]);
    let count = |what: &str| -> u64 {
        let l = stats
            .lines()
            .find(|l| l.ends_with(what))
            .unwrap_or_else(|| panic!("no '{what}' in:\n{stats}"));
        l.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("count")
    };
    let (reads, writes) = (
        count("reads by instructions"),
        count("writes by instructions"),
    );
    assert!(reads > 10_000 && writes > 10_000, "{reads} {writes}");
    let info = trace_cmd(&["info", p]);
    assert!(
        info.contains(&format!("memory accesses: {reads} reads, {writes} writes")),
        "{info}"
    );
    let pq = tmp("mem.parquet");
    trace_cmd(&["export", p, "--parquet", pq.to_str().expect("path")]);
    let got = duckdb(&format!(
        "select count(*), sum(len(mem_address)), sum(len(list_filter(mem_write, lambda x: x))), \
         sum(len(mem_size)), sum(len(mem_value)) from '{}'",
        pq.display()
    ));
    let n = reads + writes;
    assert_eq!(got, vec![format!("3000000\t{n}\t{writes}\t{n}\t{n}")]);
    // The same access, by DuckDB and by `dump`.
    let row = duckdb(&format!(
        "select icount, mem_address[1], mem_size[1], mem_write[1], mem_value[1] from '{}' \
         where len(mem_address) = 1 and icount > 2000000 order by icount limit 1",
        pq.display()
    ));
    let w: Vec<&str> = row[0].split('\t').collect();
    let ic: u64 = w[0].parse().expect("icount");
    let (addr, size, write, value): (u64, u8, &str, u64) = (
        w[1].parse().expect("a"),
        w[2].parse().expect("s"),
        w[3],
        w[4].parse().expect("v"),
    );
    let dump = trace_cmd(&["dump", p, "--from", w[0], "--to", &(ic + 1).to_string()]);
    let what = if write == "True" { "write" } else { "read " };
    let line = format!(
        "  {what} {size} [{addr:08x}] = {value:#0w$x}",
        w = usize::from(size) * 2 + 2
    );
    assert!(
        dump.lines().any(|l| l.trim_start() == line.trim_start()),
        "{line:?} not in:\n{dump}"
    );
}

#[test]
fn stats_hot_flame_and_duckdb_count_the_same_instructions() {
    let elf_path = common::guests_dir().join("c.elf");
    let path = tmp("analysis.trc");
    let n = traced_run(
        &["--kernel", elf_path.to_str().expect("path"), "--icount"],
        &path,
    );
    let p = path.to_str().expect("path");
    // The oracle: every block of the trace decoded here, each instruction counted by
    // mnemonic and by the function of c.elf's symbol table that holds it.
    let image = std::fs::read(&elf_path).expect("c.elf");
    let elf = goblin::elf::Elf::parse(&image).expect("ELF");
    let mut funcs: Vec<(u64, u64, String)> = elf
        .syms
        .iter()
        .filter(|s| s.is_function() && s.st_size > 0)
        .map(|s| {
            let name = elf.strtab.get_at(s.st_name).unwrap_or("").to_string();
            (s.st_value, s.st_value + s.st_size, name)
        })
        .collect();
    funcs.sort();
    let mut by_mnemonic = std::collections::HashMap::<String, u64>::new();
    let mut by_func = std::collections::HashMap::<String, u64>::new();
    let mut r = TraceReader::open(&path).expect("trace");
    while let Some(rec) = r.next_record().expect("record") {
        let Record::Block { id, .. } = rec else {
            continue;
        };
        let d = r.def(id);
        let mut dec = Decoder::with_ip(d.bitness, &d.bytes, d.eip, DecoderOptions::NONE);
        for _ in 0..d.insns {
            let i = dec.decode();
            *by_mnemonic
                .entry(format!("{:?}", i.mnemonic()).to_lowercase())
                .or_default() += 1;
            if let Some(f) = funcs.iter().find(|f| f.0 <= i.ip() && i.ip() < f.1) {
                *by_func.entry(f.2.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(by_mnemonic.values().sum::<u64>(), n);
    // stats: the total and every mnemonic.
    let stats = trace_cmd(&["stats", p, "--top", "1000"]);
    assert!(stats.starts_with(&format!("{n} instructions\n")), "{stats}");
    let mnem = table(&stats, "by mnemonic:");
    assert_eq!(mnem.len(), by_mnemonic.len(), "{stats}");
    for (c, m) in &mnem {
        assert_eq!(Some(c), by_mnemonic.get(m), "{m}");
    }
    assert_eq!(table(&stats, "by ring:"), vec![(n, "ring 0".to_string())]);
    // hot: the functions, by name from the ELF file.
    let hot = trace_cmd(&[
        "hot",
        p,
        "--symbols",
        elf_path.to_str().expect("path"),
        "--top",
        "10",
    ]);
    let funcs_hot = table(&hot, "hot functions:");
    assert!(funcs_hot.len() == 10, "{hot}");
    // (The C functions, which have sizes; the assembly's labels have none.)
    let mut checked = 0;
    for (c, name) in &funcs_hot {
        let f = name.split(' ').next().expect("name");
        if funcs.iter().any(|x| x.2 == f) {
            assert_eq!(Some(c), by_func.get(f), "{f} in\n{hot}");
            checked += 1;
        }
    }
    assert!(checked >= 5, "{hot}");
    assert!(funcs_hot[0].1.starts_with("cprog_run "), "{hot}");
    // dump names each instruction's function, as the ELF's symbol table says.
    let d = trace_cmd(&[
        "dump",
        p,
        "--from",
        "1000000",
        "--to",
        "1002000",
        "--symbols",
        elf_path.to_str().expect("path"),
    ]);
    let mut named = 0;
    for l in d.lines().filter(|l| !l.trim_start().starts_with("--")) {
        let a = u64::from_str_radix(l.split_whitespace().nth(1).expect("address"), 16)
            .expect("address");
        if let Some(f) = funcs.iter().find(|f| f.0 <= a && a < f.1) {
            assert!(l.ends_with(&format!("<{}+{:#x}>", f.2, a - f.0)), "{l}");
            named += 1;
        }
    }
    assert!(named > 1000, "{d}");
    // DuckDB reads the export and counts what stats counted.
    let pq = tmp("analysis.parquet");
    trace_cmd(&["export", p, "--parquet", pq.to_str().expect("path")]);
    let q = format!(
        "select mnemonic, count(*), min(icount), max(icount) from '{}' group by 1",
        pq.display()
    );
    let rows = duckdb(&q);
    assert_eq!(rows.len(), by_mnemonic.len());
    for row in rows {
        let f: Vec<&str> = row.split('\t').collect();
        assert_eq!(
            by_mnemonic.get(f[0]).map(u64::to_string).as_deref(),
            Some(f[1]),
            "{row}"
        );
    }
    let q = format!("select count(*), sum(instructions) from '{}'", pq.display());
    let blocks_pq = tmp("analysis-blocks.parquet");
    trace_cmd(&[
        "export",
        p,
        "--blocks",
        "--parquet",
        blocks_pq.to_str().expect("path"),
    ]);
    let rows = duckdb(&q.replace(
        pq.to_str().expect("path"),
        blocks_pq.to_str().expect("path"),
    ));
    let f: Vec<u64> = rows[0]
        .split('\t')
        .map(|x| x.parse().expect("number"))
        .collect();
    assert_eq!(f[1], n);
    // flame: the call tree, with qsort's comparison functions (called through a
    // pointer) under my_qsort, and every instruction somewhere.
    let folded = tmp("c.folded");
    trace_cmd(&[
        "flame",
        p,
        "--symbols",
        elf_path.to_str().expect("path"),
        "--folded",
        "-o",
        folded.to_str().expect("path"),
    ]);
    let text = std::fs::read_to_string(&folded).expect("folded");
    let mut total = 0u64;
    for l in text.lines() {
        let (stack, c) = l.rsplit_once(' ').expect("stack count");
        total += c.parse::<u64>().expect("count");
        if stack.ends_with(";cmp_asc") || stack.contains(";cmp_asc;") {
            assert!(stack.contains("main;cprog_run;my_qsort;"), "{l}");
        }
    }
    assert_eq!(total, n);
    assert!(
        text.contains("CR3 0x0;main;cprog_run;my_qsort;cmp_asc "),
        "{text}"
    );
    let svg = tmp("c.svg");
    trace_cmd(&[
        "flame",
        p,
        "--symbols",
        elf_path.to_str().expect("path"),
        "-o",
        svg.to_str().expect("path"),
    ]);
    let svg = std::fs::read_to_string(&svg).expect("svg");
    assert!(svg.starts_with("<?xml") && svg.contains("my_qsort"));
}

#[test]
fn diff_names_where_two_boots_part() {
    let dir = common::linux_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    let (k, i) = (
        kernel.to_str().expect("path"),
        initrd.to_str().expect("path"),
    );
    let appends = ["console=ttyS0 ox86test=smoke", "console=ttyS0 nokaslr"];
    let mut files = Vec::new();
    for (n, append) in appends.iter().enumerate() {
        let f = tmp(&format!("part-{n}.trc"));
        traced_run(
            &[
                "--kernel",
                k,
                "--initrd",
                i,
                "--append",
                append,
                "-m",
                "256M",
                "--icount",
                "--trace-to",
                "20000000",
                "--max-insns",
                "20000000",
            ],
            &f,
        );
        files.push(f);
    }
    let out = common::run_ox86(
        &[
            "trace",
            "diff",
            files[0].to_str().expect("path"),
            files[1].to_str().expect("path"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = common::text(&out.stdout);
    let at: u64 = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("the traces part at instruction "))
        .and_then(|l| l.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // Each side's first line after the parting is its instruction `at`.
    let firsts: Vec<u64> = text
        .lines()
        .filter(|l| l.ends_with(".trc:"))
        .map(|l| {
            let next = text.lines().skip_while(|x| *x != l).nth(1).expect("line");
            let f: Vec<&str> = next.trim_start_matches('>').split_whitespace().collect();
            u64::from_str_radix(f[1], 16).expect("address")
        })
        .collect();
    // The oracle: the two machines run to `at - 1` and to `at`: the same instruction
    // before, not after, and what the trace says is next on each side.
    let image = std::fs::read(&kernel).expect("kernel");
    let initrd = std::fs::read(&initrd).expect("initrd");
    let mut pcs = Vec::new();
    for append in appends {
        let mut m = MachineBuilder::new()
            .ram_size(256 << 20)
            .serial(SerialOut::None)
            .kernel(image.clone(), append.to_string(), Some(initrd.clone()))
            .icount(0)
            .jit(None)
            .build()
            .expect("machine");
        m.run_until(Some(at - 1), None).expect("run");
        let before = m.pc_linear();
        m.run_until(Some(at), None).expect("run");
        pcs.push((before, m.pc_linear()));
    }
    assert_eq!(pcs[0].0, pcs[1].0, "{text}");
    assert_ne!(pcs[0].1, pcs[1].1, "{text}");
    assert_eq!(firsts, vec![pcs[0].1, pcs[1].1], "{text}");
    // A trace against itself: the same.
    let out = common::run_ox86(
        &[
            "trace",
            "diff",
            files[0].to_str().expect("path"),
            files[0].to_str().expect("path"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0));
}

fn mem_line(icount: u64, a: &ox86::trace::MemAccess) -> String {
    format!(
        "mem {icount} {:x} {} {} {:x} {}",
        a.lin, a.size, a.write, a.value, a.delivery
    )
}

/// Hooks that keep everything they are called with, as text.
struct Keep(std::sync::Arc<std::sync::Mutex<Vec<String>>>, Vec<String>);

impl ox86::trace::TraceHooks for Keep {
    fn on_block(&mut self, icount: u64, def: &ox86::trace::BlockDef) {
        self.1
            .push(format!("block {icount} {:x} {}", def.lin(), def.insns));
    }
    fn wants_instructions(&self) -> bool {
        true
    }
    fn on_instruction(&mut self, icount: u64, lin: u64, insn: &iced_x86::Instruction) {
        self.1
            .push(format!("insn {icount} {lin:x} {:?}", insn.mnemonic()));
    }
    fn on_exception(&mut self, icount: u64, vector: u8, code: Option<u32>, cr2: u64) {
        self.1
            .push(format!("exception {icount} {vector} {code:?} {cr2:x}"));
    }
    fn on_interrupt(&mut self, icount: u64, vector: u8) {
        self.1.push(format!("interrupt {icount} {vector}"));
    }
    fn on_context(&mut self, icount: u64, cr0: u64, cr3: u64, cpl: u8) {
        self.1
            .push(format!("context {icount} {cr0:x} {cr3:x} {cpl}"));
    }
    fn on_port(&mut self, icount: u64, write: bool, port: u16, size: u8, value: u32) {
        self.1
            .push(format!("port {icount} {write} {port:x} {size} {value:x}"));
    }
    fn wants_memory(&self) -> bool {
        true
    }
    fn on_memory(&mut self, icount: u64, a: ox86::trace::MemAccess) {
        self.1.push(mem_line(icount, &a));
    }
    fn on_end(&mut self, icount: u64) {
        self.1.push(format!("end {icount}"));
        *self.0.lock().expect("lock") = std::mem::take(&mut self.1);
    }
}

#[test]
fn hooks_see_what_the_trace_file_holds() {
    let elf = common::guests_dir().join("gdbdemo.elf");
    let path = tmp("hooks.trc");
    traced_run(
        &[
            "--kernel",
            elf.to_str().expect("path"),
            "--icount",
            "--max-insns",
            "2000000",
            "--trace-mem",
        ],
        &path,
    );
    // The oracle: the file, read back, in the same words (memory accesses apart: in
    // the file they come before their block, to the hooks after their instruction).
    let mut want = Vec::new();
    let mut want_mem = Vec::new();
    let mut r = TraceReader::open(&path).expect("trace");
    let fmt_insns = |icount: u64, d: &ox86::trace::BlockDef, want: &mut Vec<String>| {
        let mut dec = Decoder::with_ip(d.bitness, &d.bytes, d.eip, DecoderOptions::NONE);
        for k in 0..u64::from(d.insns) {
            let i = dec.decode();
            want.push(format!(
                "insn {} {:x} {:?}",
                icount + k,
                i.ip(),
                i.mnemonic()
            ));
        }
    };
    while let Some(rec) = r.next_record().expect("record") {
        match rec {
            Record::Block { id, icount } => {
                let d = r.def(id);
                want.push(format!("block {icount} {:x} {}", d.lin(), d.insns));
                fmt_insns(icount, d, &mut want);
            }
            Record::Exception {
                icount,
                vector,
                error_code,
                cr2,
                ..
            } => want.push(format!(
                "exception {icount} {vector} {error_code:?} {cr2:x}"
            )),
            Record::Interrupt { icount, vector } => {
                want.push(format!("interrupt {icount} {vector}"))
            }
            Record::Context {
                icount,
                cr0,
                cr3,
                cpl,
                ..
            } => want.push(format!("context {icount} {cr0:x} {cr3:x} {cpl}")),
            Record::Port {
                icount,
                write,
                port,
                size,
                value,
            } => want.push(format!("port {icount} {write} {port:x} {size} {value:x}")),
            Record::Mem { icount, access } => want_mem.push(mem_line(icount, &access)),
            Record::Time { .. } => {}
        }
    }
    want.push(format!("end {}", r.icount()));
    // The hooks, with the JIT compiling at once so that most of the run is compiled.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = ox86_jit::JitConfig {
        hot_threshold: 2,
        inline_compile: true,
        cache: None,
        ..Default::default()
    };
    let mut m = MachineBuilder::new()
        .ram_size(128 << 20)
        .serial(SerialOut::None)
        .kernel(std::fs::read(&elf).expect("elf"), String::new(), None)
        .icount(0)
        .max_insns(2_000_000)
        .jit(Some(config))
        .hooks(Box::new(Keep(got.clone(), Vec::new())), 0, None)
        .build()
        .expect("machine");
    assert_eq!(m.run().expect("run"), ExitReason::InstructionLimit);
    let jit = m.stats().jit.expect("jit");
    assert!(jit.compiled_insns > 1_000_000, "{jit:?}");
    let all = got.lock().expect("lock").clone();
    // Each instruction's accesses right after it (deliveries' after their event).
    let mut last = None;
    for l in &all {
        let w: Vec<&str> = l.split(' ').collect();
        match w[0] {
            "insn" | "exception" | "interrupt" => last = Some((w[0], w[1].to_string())),
            "mem" => {
                let kind = if w[6] == "true" { "exception" } else { "insn" };
                let ok = last.as_ref().is_some_and(|(k, c)| {
                    (*k == kind || (kind == "exception" && *k == "interrupt")) && c == w[1]
                });
                assert!(ok, "{l} after {last:?}");
            }
            _ => {}
        }
    }
    let (got_mem, got): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|l| l.starts_with("mem "));
    assert!(want_mem.len() > 100_000, "{}", want_mem.len());
    assert!(
        got_mem == want_mem,
        "the hooks saw other memory accesses than the trace file holds"
    );
    assert!(got.len() > 100_000);
    assert!(
        got == want,
        "the hooks saw another run than the trace file holds"
    );
}

/// A trace of `data` (record bytes) in one chunk with a right checksum, claiming
/// `insns` instructions, and an end record.
fn forged(data: &[u8], insns: u64) -> Vec<u8> {
    use ox86::trace::format;
    let mut f = format::header(0, 0, 7).to_vec();
    let comp = lz4_flex::block::compress(data);
    f.extend_from_slice(&format::chunk_header(&comp, data.len(), 0, insns));
    f.extend_from_slice(&comp);
    f.extend_from_slice(&format::end_record(0, insns, insns));
    f
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

    /// Records behind a right checksum (what a bug or a forger could write) never
    /// make the reader panic: each is read, or refused with one line.
    #[test]
    fn forged_records_never_panic(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        insns in 0u64..1000,
    ) {
        if let Err(e) = read_all(&forged(&data, insns)) {
            proptest::prop_assert!(!e.contains('\n'));
        }
    }

    /// The same with well-formed definitions and blocks among the junk.
    #[test]
    fn forged_streams_never_panic(
        recs in proptest::collection::vec((0u64..12, proptest::num::u64::ANY, 0usize..40), 0..60),
    ) {
        let mut d = Vec::new();
        for (k, v, n) in recs {
            ox86::trace::format::put_varint(&mut d, k);
            if k == 3 {
                // A definition: fields, then bytes.
                for x in [0, v & 0xffff_ffff, v & 0xfffff, 0, 32, (n as u64 % 64) + 1, n as u64] {
                    ox86::trace::format::put_varint(&mut d, x);
                }
                d.extend(std::iter::repeat_n(0x90u8, n));
            } else {
                ox86::trace::format::put_varint(&mut d, v);
            }
        }
        if let Err(e) = read_all(&forged(&d, 5)) {
            proptest::prop_assert!(!e.contains('\n'));
        }
    }
}
