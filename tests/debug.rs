//! The library's debugging API on the bare-metal program gdbdemo.elf
//! (tests/guests/c/gdbdemo.c): breakpoints and watchpoints stop both engines at the
//! same instruction, with the values a host computation of the program gives; steps
//! run one instruction of the length iced-x86 decodes; the history returns to any
//! earlier instruction count in the state the first run had there (digest for
//! digest), and reverse continue finds the hit before.

mod common;

use goblin::elf::Elf;
use ox86::cpu::{WatchKind, Watchpoint};
use ox86::{ExitReason, Machine, MachineBuilder, SerialOut};

fn image() -> Vec<u8> {
    std::fs::read(common::guests_dir().join("gdbdemo.elf")).expect("gdbdemo.elf")
}

/// The address of symbol `name` in gdbdemo.elf.
fn sym(name: &str) -> u64 {
    let img = image();
    let elf = Elf::parse(&img).expect("ELF");
    elf.syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
        .unwrap_or_else(|| panic!("no symbol {name}"))
        .st_value
}

/// gdbdemo under icount, with the JIT compiling every block at once (so that the hot
/// loop runs compiled) or the interpreter alone.
fn machine(jit: bool) -> Machine {
    let config = jit.then(|| ox86_jit::JitConfig {
        hot_threshold: 2,
        inline_compile: true,
        cache: None,
        ..Default::default()
    });
    MachineBuilder::new()
        .ram_size(32 << 20)
        .serial(SerialOut::None)
        .kernel(image(), String::new(), None)
        .icount(0)
        .jit(config)
        .build()
        .expect("machine")
}

/// The address of spin_loop's store to `global` (found by decoding the function).
fn store_to(global: u64) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, OpKind};
    let img = image();
    let elf = Elf::parse(&img).expect("ELF");
    let f = elf
        .syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some("spin_loop"))
        .expect("spin_loop");
    let ph = elf
        .program_headers
        .iter()
        .find(|p| p.p_vaddr <= f.st_value && f.st_value < p.p_vaddr + p.p_filesz)
        .expect("segment");
    let off = (ph.p_offset + f.st_value - ph.p_vaddr) as usize;
    let code = &img[off..off + f.st_size as usize];
    Decoder::with_ip(32, code, f.st_value, DecoderOptions::NONE)
        .into_iter()
        .find(|i| i.op0_kind() == OpKind::Memory && i.memory_displacement64() == global)
        .map(|i| i.ip())
        .expect("a store to the global")
}

fn read_u32(m: &Machine, lin: u64) -> u32 {
    let mut b = [0u8; 4];
    assert_eq!(m.read_virtual(lin, &mut b), 4, "{lin:#x} is mapped");
    u32::from_le_bytes(b)
}

/// The values spin_loop stores through note_spin, computed on the host.
fn spin_values(n: usize) -> Vec<u32> {
    let mut acc = 0u32;
    let mut out = Vec::new();
    for i in 0u32..1_000_000 {
        acc = acc.wrapping_add(i ^ (acc >> 3));
        if i & 0xffff == 0xffff {
            out.push(acc);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// What one engine stops at: breakpoint hits on bump (with its argument), then write
/// watchpoint hits on spin (with the value written), then breakpoint hits on
/// note_spin in the compiled loop.
/// (instruction count, value) of each stop.
type Hits = Vec<(u64, u32)>;

fn stops(jit: bool) -> (Hits, Hits, Vec<u64>, u64) {
    let mut m = machine(jit);
    let bump = sym("bump");
    assert!(m.add_breakpoint(bump));
    let mut bumps = Vec::new();
    for _ in 0..5 {
        let r = m.run_until(None, None).expect("run");
        assert_eq!(r, ExitReason::Breakpoint(bump));
        assert_eq!(m.pc_linear(), bump);
        // The argument is above the return address.
        let esp = m.cpu().state.regs[4];
        bumps.push((m.icount(), read_u32(&m, esp + 4)));
    }
    assert!(m.remove_breakpoint(bump));
    let spin = sym("spin");
    let w = Watchpoint {
        addr: spin,
        len: 4,
        kind: WatchKind::Write,
    };
    assert!(m.add_watchpoint(w));
    let mut writes = Vec::new();
    for _ in 0..4 {
        let r = m.run_until(None, None).expect("run");
        assert_eq!(
            r,
            ExitReason::Watchpoint {
                watch: w,
                write: true
            }
        );
        writes.push((m.icount(), read_u32(&m, spin)));
    }
    assert!(m.remove_watchpoint(w));
    // In the hot loop, compiled by now (with the JIT): a watchpoint on the global it
    // writes every iteration, then a breakpoint on that store.
    let n = m.icount();
    assert_eq!(
        m.run_until(Some(n + 1_000_000), None).expect("run"),
        ExitReason::Reached
    );
    let spin_i = sym("spin_i");
    let wi = Watchpoint {
        addr: spin_i,
        len: 4,
        kind: WatchKind::Access,
    };
    m.add_watchpoint(wi);
    for _ in 0..3 {
        let r = m.run_until(None, None).expect("run");
        assert_eq!(
            r,
            ExitReason::Watchpoint {
                watch: wi,
                write: true
            }
        );
        writes.push((m.icount(), read_u32(&m, spin_i)));
    }
    m.remove_watchpoint(wi);
    let store = store_to(spin_i);
    m.add_breakpoint(store);
    let mut notes = Vec::new();
    for _ in 0..3 {
        assert_eq!(
            m.run_until(None, None).expect("run"),
            ExitReason::Breakpoint(store)
        );
        notes.push(m.icount());
    }
    m.remove_breakpoint(store);
    // note_spin, on its own page, called by compiled code and compiled itself.
    let before = m.stats().jit.map_or(0, |j| j.compiled_insns);
    let n = m.icount();
    assert_eq!(
        m.run_until(Some(n + 2_000_000), None).expect("run"),
        ExitReason::Reached
    );
    let after = m.stats().jit.map_or(0, |j| j.compiled_insns);
    assert!(
        !jit || after - before > 1_900_000,
        "compiled: {}",
        after - before
    );
    let note = sym("note_spin");
    assert_ne!(
        note >> 12,
        store >> 12,
        "note_spin's page is not the loop's"
    );
    m.add_breakpoint(note);
    for _ in 0..3 {
        assert_eq!(
            m.run_until(None, None).expect("run"),
            ExitReason::Breakpoint(note)
        );
        notes.push(m.icount());
    }
    m.clear_stop_points();
    let compiled = m.stats().jit.map_or(0, |j| j.compiled_insns);
    let end = m.run_until(None, None).expect("run to the end");
    assert!(matches!(end, ExitReason::GuestExit(_)), "{end:?}");
    (bumps, writes, notes, compiled)
}

#[test]
fn breakpoints_and_watchpoints_stop_both_engines_at_the_same_instruction() {
    let (b_jit, w_jit, n_jit, compiled) = stops(true);
    let (b_int, w_int, n_int, _) = stops(false);
    assert!(
        compiled > 100_000,
        "the hot loop ran compiled ({compiled} instructions)"
    );
    assert_eq!(
        b_jit.iter().map(|b| b.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "bump's arguments"
    );
    assert_eq!(
        w_jit[..4].iter().map(|w| w.1).collect::<Vec<_>>(),
        spin_values(4),
        "the values written, as the host computes them"
    );
    let i0 = w_jit[4].1;
    assert_eq!(
        w_jit[4..].iter().map(|w| w.1).collect::<Vec<_>>(),
        vec![i0, i0 + 1, i0 + 2],
        "the loop counter, stored every iteration"
    );
    assert_eq!(b_jit, b_int);
    assert_eq!(w_jit, w_int, "watchpoints: JIT and interpreter");
    assert_eq!(
        n_jit, n_int,
        "breakpoints in the hot loop: JIT and interpreter"
    );
    assert_eq!(
        n_jit[1] - n_jit[0],
        n_jit[2] - n_jit[1],
        "one per iteration"
    );
    assert_eq!(
        n_jit[4] - n_jit[3],
        n_jit[5] - n_jit[4],
        "one per 65536 iterations"
    );
}

#[test]
fn a_step_runs_one_instruction() {
    use iced_x86::{Decoder, DecoderOptions};
    for jit in [true, false] {
        let mut m = machine(jit);
        m.add_breakpoint(sym("square"));
        assert_eq!(
            m.run_until(None, None).expect("run"),
            ExitReason::Breakpoint(sym("square"))
        );
        for _ in 0..6 {
            let pc = m.pc_linear();
            let mut code = [0u8; 15];
            m.read_virtual(pc, &mut code);
            let insn = Decoder::with_ip(32, &code, pc, DecoderOptions::NONE).decode();
            let n = m.icount();
            assert_eq!(m.step().expect("step"), ExitReason::Stepped);
            assert_eq!(m.icount(), n + 1);
            if !insn.flow_control().eq(&iced_x86::FlowControl::Next) {
                break;
            }
            assert_eq!(m.pc_linear(), pc + insn.len() as u64, "{insn}");
        }
    }
}

#[test]
fn the_history_returns_to_the_states_of_the_first_run() {
    let mut m = machine(true);
    // Small intervals, so that checkpoints are thinned as the run goes on.
    m.keep_history(100_000).expect("history");
    let at = [1_000u64, 55_555, 3_000_000, 7_654_321, 11_000_000];
    let mut seen = Vec::new();
    for &n in &at {
        for k in [n - 1, n] {
            assert_eq!(
                m.run_until(Some(k), None).expect("run"),
                ExitReason::Reached
            );
            seen.push((k, m.digest()));
        }
    }
    let h = m.history_stats().expect("stats");
    assert!(h.checkpoints < 110, "thinned: {} kept", h.checkpoints);
    // Back, in an order that goes back and forth.
    for &i in &[9usize, 4, 6, 0, 8, 3, 5, 1, 7, 2] {
        let (k, d) = &seen[i];
        assert_eq!(m.goto(*k).expect("goto"), ExitReason::Reached);
        assert_eq!(m.icount(), *k);
        assert_eq!(m.digest(), *d, "the state at instruction {k}");
    }
    // One instruction back from each point is the state one instruction before.
    for pair in seen.chunks(2) {
        let ((before, d_before), (after, _)) = (&pair[0], &pair[1]);
        m.goto(*after).expect("goto");
        assert_eq!(m.reverse_step().expect("reverse step"), ExitReason::Stepped);
        assert_eq!(m.icount(), *before);
        assert_eq!(m.digest(), *d_before);
    }
    // The guest runs on to its end from the past.
    m.goto(10).expect("goto");
    assert!(matches!(
        m.run_until(None, None).expect("run"),
        ExitReason::GuestExit(_)
    ));
}

#[test]
fn reverse_continue_stops_at_the_hit_before() {
    for jit in [true, false] {
        let mut m = machine(jit);
        m.keep_history(250_000).expect("history");
        let note = sym("note_spin");
        m.add_breakpoint(note);
        let mut hits = Vec::new();
        for _ in 0..4 {
            assert_eq!(
                m.run_until(None, None).expect("run"),
                ExitReason::Breakpoint(note)
            );
            hits.push((m.icount(), m.digest()));
        }
        for k in (0..3).rev() {
            assert_eq!(
                m.reverse_continue().expect("reverse continue"),
                ExitReason::Breakpoint(note)
            );
            assert_eq!((m.icount(), m.digest()), hits[k], "hit {k}");
        }
        m.clear_stop_points();
        let spin = sym("spin");
        let w = Watchpoint {
            addr: spin,
            len: 4,
            kind: WatchKind::Write,
        };
        m.add_watchpoint(w);
        let mut writes = Vec::new();
        for _ in 0..3 {
            m.run_until(None, None).expect("run");
            writes.push((m.icount(), read_u32(&m, spin)));
        }
        // Back over the last write: before the instruction that made it, with the
        // value before it.
        for k in (0..3).rev() {
            assert_eq!(
                m.reverse_continue().expect("reverse continue"),
                ExitReason::Watchpoint {
                    watch: w,
                    write: true
                }
            );
            assert_eq!(m.icount(), writes[k].0 - 1);
            let before = if k == 0 { 0 } else { writes[k - 1].1 };
            assert_eq!(read_u32(&m, spin), before);
        }
        assert_eq!(m.reverse_continue().expect("rc"), ExitReason::HistoryStart);
        assert_eq!(m.icount(), 0);
    }
}

/// The guest's console, shared with the test.
#[derive(Clone, Default)]
struct Console(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).replace('\r', "")
    }
}

/// Runs until the console shows `what` (or panics after `max` instructions).
fn run_to_output(m: &mut Machine, con: &Console, what: &str, max: u64) {
    let limit = m.icount() + max;
    while !con.text().contains(what) {
        assert!(m.icount() < limit, "no {what:?} in:\n{}", con.text());
        let n = m.icount();
        assert_eq!(
            m.run_until(Some(n + 20_000_000), None).expect("run"),
            ExitReason::Reached
        );
    }
}

#[test]
#[ignore = "needs the fetched kernel: scripts/test runs it (--include-ignored)"]
fn typed_input_is_fed_again_when_the_history_re_executes() {
    let dir = common::linux_dir();
    let con = Console::default();
    let mut m = MachineBuilder::new()
        .ram_size(256 << 20)
        .serial(SerialOut::Writer(Box::new(con.clone())))
        .kernel(
            std::fs::read(dir.join("vmlinuz")).expect("vmlinuz"),
            "console=ttyS0 nokaslr".into(),
            Some(std::fs::read(dir.join("initramfs.cpio.gz")).expect("initramfs")),
        )
        .icount(0)
        .jit(Some(ox86_jit::JitConfig {
            cache: None,
            ..Default::default()
        }))
        .build()
        .expect("machine");
    run_to_output(&mut m, &con, "boot with ox86test=NAME", 10_000_000_000);
    // The history from here, with checkpoints close enough that some fall while the
    // typed line waits in COM1's queue for room in its FIFO.
    m.keep_history(1_000).expect("history");
    let input = m.serial_input().expect("COM1");
    let before = m.icount();
    let line = format!("echo $((6*7))x{}\n", " ".repeat(400));
    input.push(line.as_bytes());
    // Back and forth while the line goes in: the checkpoints near it hold some of it
    // still queued.
    m.run_until(Some(before + 15_000), None).expect("run");
    let d15 = m.digest();
    m.goto(before + 5_000).expect("goto");
    m.goto(before + 15_000).expect("goto");
    assert_eq!(m.digest(), d15, "while the line was queued");
    run_to_output(&mut m, &con, "42x", 2_000_000_000);
    let n = m.icount();
    m.run_until(Some(n + 2_000_000), None).expect("run");
    let (end, d_end) = (m.icount(), m.digest());
    let printed = con.text();
    // Back before the input, and into the time it was queued, forward again: the guest
    // gets it at the same instructions and ends in the same state; what it printed
    // before is not printed again.
    for back in [before, before + 30_000, before + 70_000] {
        assert_eq!(m.goto(back).expect("goto"), ExitReason::Reached);
        assert_eq!(m.goto(end).expect("goto"), ExitReason::Reached);
        assert_eq!(m.digest(), d_end, "back to {back}, then forward");
    }
    assert_eq!(con.text(), printed, "no output twice");
    // New input goes on from the end.
    input.push(b"echo $((7*8))y\n");
    run_to_output(&mut m, &con, "56y", 2_000_000_000);
}

#[test]
fn a_restored_snapshot_starts_the_history_again() {
    let mut m = machine(true);
    m.keep_history(50_000).expect("history");
    m.run_until(Some(300_000), None).expect("run");
    let snap = m.snapshot();
    let d = m.digest();
    m.run_until(Some(900_000), None).expect("run");
    m.restore(&snap).expect("restore");
    assert_eq!(m.history_start(), Some(300_000));
    assert_eq!(m.digest(), d);
    m.run_until(Some(400_000), None).expect("run");
    let d4 = m.digest();
    m.goto(320_000).expect("goto back");
    m.goto(400_000).expect("goto forward");
    assert_eq!(m.digest(), d4);
    assert!(m.goto(100).is_err(), "before the history's start");
}
