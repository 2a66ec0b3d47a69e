//! Command-line interface: `ox86 run [options]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ox86::{ExitReason, MachineBuilder, SerialOut};

use crate::size::parse_size;

/// ox86: a full-system x86 emulator.
#[derive(Parser, Debug)]
#[command(name = "ox86", version, about)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a guest: a kernel image, or with no image the built-in demo guest.
    Run(Box<RunArgs>),
    /// Read instruction traces that `run --trace` wrote.
    #[command(subcommand)]
    Trace(crate::trace::TraceCmd),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Kernel image: a Multiboot ELF, a plain ELF32, or a Linux bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (Linux) or Multiboot module.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Guest RAM size (e.g. 64M, 1G; a bare number means MiB).
    #[arg(short = 'm', long = "memory", default_value = "128M")]
    memory: String,
    /// Where COM1 goes: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio")]
    serial: String,
    /// End the run when the guest resets instead of rebooting it (exit status 0).
    #[arg(long)]
    no_reboot: bool,
    /// Print statistics at exit: instructions, wall time, guest MIPS, counters, and
    /// the digest of the final machine state.
    #[arg(long)]
    stats: bool,
    /// Record the run to replay log FILE (implies --icount): the console input with the
    /// instruction count at which it entered the guest, and checks of the state.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["replay", "lockstep"])]
    record: Option<PathBuf>,
    /// Replay log FILE: the same run again, instruction for instruction, with the
    /// logged input and none from the host; stops at the first check that differs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["lockstep"])]
    replay: Option<PathBuf>,
    /// Resume the machine saved in snapshot FILE (taken of the same kernel, initrd,
    /// command line and RAM size) instead of booting it.
    #[arg(long, value_name = "FILE")]
    loadvm: Option<PathBuf>,
    /// Save a snapshot of the whole machine to FILE when the instruction count
    /// reaches N.
    #[arg(long, value_name = "N:FILE")]
    snapshot_at: Option<String>,
    /// Print a digest of the machine state (CPU and FPU, devices, RAM) every N
    /// instructions, to standard error: under --icount, two runs that print the same
    /// digests went through the same states.
    #[arg(long, value_name = "N")]
    hash_every: Option<u64>,
    /// Listen for GDB on tcp::1234 (short for --gdb tcp::1234). Implies --icount: the
    /// run's history is kept from the start for reverse execution.
    #[arg(short = 's', conflicts_with_all = ["record", "replay", "lockstep"])]
    gdb_default: bool,
    /// Do not start the guest until GDB connects and continues it.
    #[arg(short = 'S')]
    wait_gdb: bool,
    /// Listen for GDB on tcp:[HOST]:PORT (with no host, the loopback interface).
    /// Implies --icount, as -s.
    #[arg(long, value_name = "tcp:[HOST]:PORT", conflicts_with_all = ["record", "replay", "lockstep"])]
    gdb: Option<String>,
    /// Record an instruction trace to FILE: every instruction executed, in order,
    /// with exceptions, interrupts, mode and CR3 changes and port I/O (read it with
    /// `ox86 trace`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["gdb", "gdb_default", "lockstep"])]
    trace: Option<PathBuf>,
    /// Start the trace at this instruction count.
    #[arg(long, value_name = "N", requires = "trace")]
    trace_from: Option<u64>,
    /// End the trace at this instruction count (the run goes on).
    #[arg(long, value_name = "N", requires = "trace")]
    trace_to: Option<u64>,
    /// Record every memory access in the trace too (address, size, value, read or
    /// write).
    #[arg(long, requires = "trace")]
    trace_mem: bool,
    /// Instructions between the checkpoints of the debugger's history.
    #[arg(long, value_name = "N", hide = true)]
    history_every: Option<u64>,
    /// Stop after this many guest instructions.
    #[arg(long)]
    max_insns: Option<u64>,
    /// Derive guest time from the instruction count (2^SHIFT ns per instruction), so
    /// that runs are deterministic.
    #[arg(long, value_name = "SHIFT", num_args = 0..=1, default_missing_value = "0")]
    icount: Option<u32>,
    /// Where the guest's real-time clock starts: base=utc, base=localtime or
    /// base=YYYY-MM-DDTHH:MM:SS [default: utc; under --icount 2024-01-01T00:00:00, so
    /// that runs repeat]
    #[arg(long, value_name = "base=...")]
    rtc: Option<String>,
    /// Run the interpreter alone, without the JIT.
    #[arg(long)]
    interp: bool,
    /// Run the interpreter alone beside the JIT and stop at the first difference
    /// (registers, flags, segments, x87 state, instruction count, guest RAM). Implies
    /// --icount; host input is not fed to the guest.
    #[arg(long, conflicts_with = "interp")]
    lockstep: bool,
    /// Executions of a block before the JIT compiles its region.
    #[arg(long, value_name = "N")]
    jit_threshold: Option<u64>,
    /// Testing aid: each compilation waits this many microseconds first (compiled code
    /// arriving later must change speed only).
    #[arg(long, value_name = "MICROSECONDS", hide = true)]
    jit_compile_delay: Option<u64>,
    /// Testing aid: bytes of code memory (two generations, each freed whole when
    /// full; the default is 128M).
    #[arg(long, value_name = "SIZE", hide = true)]
    jit_code_memory: Option<String>,
    /// The translation cache on disk, which keeps compiled code for the next run:
    /// a directory, or `off` [default: $XDG_CACHE_HOME/ox86/jit, else
    /// ~/.cache/ox86/jit]. Several ox86 processes may share one.
    #[arg(long, value_name = "DIR|off")]
    jit_cache: Option<String>,
    /// Most bytes the translation cache keeps (least recently used entries go
    /// first; 0: no cache).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    jit_cache_size: String,
}

/// Parses the command line; on error prints one line and returns the exit code.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(c) => Ok(c),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ");
            eprintln!("ox86: {first} (see ox86 --help)");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => run_guest(*a),
        Cmd::Trace(t) => crate::trace::run(t),
    }
}

fn serial_out(spec: &str) -> Result<SerialOut> {
    Ok(match spec {
        "stdio" => SerialOut::Stdout,
        "none" => SerialOut::None,
        s if s.starts_with("file:") => {
            let path = &s[5..];
            let f = std::fs::File::create(path)
                .with_context(|| format!("cannot create serial output file {path}"))?;
            SerialOut::Writer(Box::new(f))
        }
        s => bail!("bad --serial '{s}' (use stdio, file:PATH or none)"),
    })
}

/// The translation cache's directory: `--jit-cache`, else the user's cache directory
/// (None: off, or no home to put it in).
fn jit_cache_dir(spec: Option<&str>) -> Option<PathBuf> {
    match spec {
        Some("off") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .map(|d| d.join("ox86").join("jit")),
    }
}

fn read_file(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The monitor, while the guest is paused: runs the lines typed until the user goes
/// back to the console (None) or quits.
fn monitor_session(
    m: &mut ox86::Machine,
    lines: &std::sync::mpsc::Receiver<String>,
) -> Option<ExitReason> {
    use crate::console::{print_raw, MONITOR_OPEN};
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::TryRecvError;
    let banner =
        "\nox86 monitor: the guest is paused (help lists the commands, c goes back)\n(ox86) ";
    let pause = m.pause_flag();
    loop {
        // The console thread ends (dropping its sender) on Ctrl-A x or end of input.
        let Ok(line) = lines.recv() else {
            return Some(ExitReason::Quit);
        };
        if line == MONITOR_OPEN {
            print_raw(banner);
            continue;
        }
        match m.monitor(&line) {
            ox86::MonitorReply::Text(t) => print_raw(&format!("{t}(ox86) ")),
            ox86::MonitorReply::Continue => {
                // Opened again already (typed ahead)? Then stay; else the guest runs.
                pause.store(false, Ordering::Relaxed);
                match lines.try_recv() {
                    Ok(l) if l == MONITOR_OPEN => {
                        pause.store(true, Ordering::Relaxed);
                        print_raw(banner);
                    }
                    Ok(_) | Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => return Some(ExitReason::Quit),
                }
            }
            ox86::MonitorReply::Quit => return Some(ExitReason::Quit),
        }
    }
}

fn run_guest(a: RunArgs) -> Result<ExitCode> {
    let ram = parse_size(&a.memory).map_err(anyhow::Error::msg)?;
    let mut b = MachineBuilder::new()
        .ram_size(ram)
        .serial(serial_out(&a.serial)?)
        .no_reboot(a.no_reboot);
    if a.lockstep {
        b = b.lockstep(true);
    }
    if a.interp {
        b = b.jit(None);
    } else {
        let mut config = ox86_jit::JitConfig::default();
        if let Some(n) = a.jit_threshold {
            if n == 0 {
                bail!("--jit-threshold must be at least 1");
            }
            config.hot_threshold = n;
        }
        if let Some(us) = a.jit_compile_delay {
            config.compile_delay = std::time::Duration::from_micros(us);
        }
        if let Some(s) = &a.jit_code_memory {
            let n = parse_size(s)
                .map_err(|_| anyhow::anyhow!("bad --jit-code-memory '{s}' (use e.g. 4M)"))?;
            config.arena_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        let max = parse_size(&a.jit_cache_size).map_err(|_| {
            anyhow::anyhow!(
                "bad --jit-cache-size '{}' (use e.g. 256M, 1G)",
                a.jit_cache_size
            )
        })?;
        // A cache of no bytes is no cache.
        if let Some(dir) = jit_cache_dir(a.jit_cache.as_deref()).filter(|_| max > 0) {
            if dir.exists() && !dir.is_dir() {
                bail!("--jit-cache {}: not a directory", dir.display());
            }
            config.cache = Some((dir, max));
        }
        b = b.jit(Some(config));
    }
    if let Some(n) = a.max_insns {
        b = b.max_insns(n);
    }
    let gdb_addr = match (&a.gdb, a.gdb_default) {
        (Some(spec), _) => Some(crate::gdb::parse_address(spec)?),
        (None, true) => Some("127.0.0.1:1234".to_string()),
        (None, false) if a.wait_gdb => bail!("-S waits for GDB: give -s or --gdb too"),
        (None, false) => None,
    };
    if gdb_addr.is_some() && a.icount.is_none() {
        // Reverse execution re-runs the guest: its time must be the instruction count.
        b = b.icount(0);
    }
    if let Some(shift) = a.icount {
        if shift > 10 {
            bail!("--icount shift {shift} is too large (0-10)");
        }
        b = b.icount(shift);
    }
    if let Some(n) = a.hash_every {
        if n == 0 {
            bail!("--hash-every must be at least 1");
        }
        b = b.hash_every(n, |d| eprintln!("ox86 digest: {d}"));
    }
    if let Some(spec) = &a.rtc {
        b = b.rtc(crate::rtc::parse_rtc(spec)?);
    }
    b = match &a.kernel {
        Some(k) => {
            let image = read_file(k, "kernel")?;
            let initrd = match &a.initrd {
                Some(p) => Some(read_file(p, "initrd")?),
                None => None,
            };
            b.kernel(image, a.append.clone(), initrd)
        }
        None => {
            if a.initrd.is_some() {
                bail!("--initrd needs --kernel");
            }
            b.demo()
        }
    };
    if let Some(spec) = &a.snapshot_at {
        let bad = || anyhow::anyhow!("bad --snapshot-at '{spec}' (use N:FILE)");
        let (n, file) = spec.split_once(':').ok_or_else(bad)?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        if file.is_empty() {
            return Err(bad());
        }
        b = b.snapshot_at(n, PathBuf::from(file));
    }
    if let Some(path) = &a.record {
        b = b.record(path.clone());
    }
    if let Some(path) = &a.trace {
        let from = a.trace_from.unwrap_or(0);
        if a.trace_to.is_some_and(|to| to <= from) {
            bail!("--trace-to must be after --trace-from");
        }
        b = b.trace(ox86::trace::TracePlan {
            path: path.clone(),
            from,
            to: a.trace_to,
            memory: a.trace_mem,
        });
    }
    if let Some(path) = &a.replay {
        b = b.replay(read_file(path, "replay log")?);
    }
    // A person at the console: under icount an idle guest sleeps instead of running
    // its timers as fast as it can (its clock then keeps pace with the host's).
    {
        use std::io::IsTerminal;
        b = b.pace_idle(a.serial == "stdio" && std::io::stdin().is_terminal());
    }
    let mut m = b.build().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(path) = &a.loadvm {
        let bytes = read_file(path, "snapshot")?;
        m.restore(&bytes)
            .map_err(|e| anyhow::anyhow!("snapshot {}: {e}", path.display()))?;
    }
    let server = match &gdb_addr {
        Some(addr) => {
            let every = a
                .history_every
                .unwrap_or(ox86::history::DEFAULT_EVERY)
                .max(1);
            m.keep_history(every).map_err(|e| anyhow::anyhow!("{e}"))?;
            let s = crate::gdb::Server::listen(addr, m.pause_flag())?;
            eprintln!(
                "ox86: GDB can connect to {} (target remote {})",
                s.addr, s.addr
            );
            Some(s)
        }
        None => None,
    };
    // The terminal is the serial console when COM1 is on stdio; the guard restores it
    // on every way out of this function.
    let (monitor_tx, monitor_rx) = std::sync::mpsc::channel::<String>();
    let raw = if a.serial == "stdio" {
        if let Some(input) = m.serial_input() {
            let link = crate::console::MonitorLink {
                pause: m.pause_flag(),
                lines: monitor_tx,
            };
            crate::console::spawn_input(input, m.quit_flag(), link);
        }
        Some(crate::console::raw_mode())
    } else {
        None
    };
    let start = Instant::now();
    // With -S, the guest waits for GDB first.
    let mut waiting = a.wait_gdb;
    let reason = loop {
        if let Some(server) = &server {
            let conn = if std::mem::take(&mut waiting) {
                eprintln!("ox86: the guest waits for GDB");
                match server.wait(&m.quit_flag()) {
                    Some(c) => Some(c),
                    None => break ExitReason::Quit,
                }
            } else {
                server.take()
            };
            if let Some(conn) = conn {
                m.pause_flag().store(false, Ordering::Relaxed);
                match ox86::gdb::serve(&mut m, conn).map_err(|e| anyhow::anyhow!("{e}"))? {
                    ox86::gdb::SessionEnd::Detached => {
                        eprintln!("ox86: GDB detached; the guest runs on");
                        continue;
                    }
                    ox86::gdb::SessionEnd::Kill => break ExitReason::Quit,
                    ox86::gdb::SessionEnd::Exited(r) => break r,
                }
            }
        }
        match m.run().map_err(|e| anyhow::anyhow!("{e}"))? {
            // A GDB connection pauses the run too: it is in the server's queue before
            // the pause (see `Server::listen`), and served at the loop's top.
            ExitReason::Paused if server.as_ref().is_some_and(|s| s.has_pending()) => {}
            ExitReason::Paused => {
                if let Some(r) = monitor_session(&mut m, &monitor_rx) {
                    break r;
                }
            }
            // Stop points left by a GDB that went away: the guest waits for the next.
            ExitReason::Breakpoint(_) | ExitReason::Watchpoint { .. } if server.is_some() => {
                waiting = true;
            }
            r => break r,
        }
    };
    drop(raw);
    let wall = start.elapsed();
    let trace = m.finish_trace().map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.stats {
        let s = m.stats();
        let secs = wall.as_secs_f64();
        eprintln!(
            "ox86 stats: {} instructions in {:.3} s = {:.1} MIPS; blocks decoded {}, TLB misses {}, TLB flushes {}, code invalidations {}, interrupts {}",
            s.instructions,
            secs,
            s.instructions as f64 / secs.max(1e-9) / 1e6,
            s.blocks_decoded,
            s.tlb_misses,
            s.tlb_flushes,
            s.invalidations,
            s.interrupts
        );
        eprintln!("ox86 digest: {}", m.digest());
        if let Some(h) = m.history_stats() {
            eprintln!(
                "ox86 history: {} checkpoints kept ({} taken, {} returns to one), {:.1} MiB now, {:.1} MiB at most",
                h.checkpoints,
                h.taken,
                h.restores,
                h.bytes as f64 / (1 << 20) as f64,
                h.peak_bytes as f64 / (1 << 20) as f64
            );
        }
        if let Some(t) = &trace {
            eprintln!(
                "ox86 trace: {} instructions ({} to {}), {} blocks ({} distinct), {} bytes = {:.3} bytes per instruction",
                t.instructions,
                t.start,
                t.end,
                t.blocks,
                t.defs,
                t.bytes,
                t.bytes as f64 / t.instructions.max(1) as f64
            );
        }
        if let Some(j) = &s.jit {
            eprintln!(
                "ox86 jit: {:.1}% of instructions in compiled code ({} interpreted; {} entries from the dispatcher, {} by chaining); {} regions compiled ({} of them again, optimised, {} of those by the idle compiler; {} failed, {} stale), compile time {:.3} s, median {} us per region; {} loaded from the translation cache in {:.3} s ({} bad entries dropped); {} invalidations, {} generations freed, {} regions live ({} KiB of code)",
                100.0 * j.compiled_insns as f64 / (s.instructions.max(1)) as f64,
                s.instructions.saturating_sub(j.compiled_insns),
                j.entries,
                j.chained,
                j.regions_compiled,
                j.regions_optimized,
                j.regions_background,
                j.compile_failures,
                j.stale,
                j.compile_ns as f64 / 1e9,
                j.compile_ns_median / 1000,
                j.regions_loaded,
                j.load_ns as f64 / 1e9,
                j.cache_rejected,
                j.invalidations,
                j.generations_freed,
                j.live_regions,
                j.code_bytes / 1024
            );
            let x = &j.exits;
            eprintln!(
                "ox86 jit exits to the dispatcher: {} faults, {} for the interpreter loop, {} branches not chained ({} of them to compiled code), {} checks, {} other",
                x.fault, x.leave, x.jump, x.jump_compiled, x.check, x.other
            );
        }
    }
    let m_icount = m.cpu().state.icount;
    m.end_with_process();
    Ok(match reason {
        ExitReason::GuestExit(status) => ExitCode::from(status as u8),
        ExitReason::Reset => ExitCode::SUCCESS,
        ExitReason::Halted => {
            eprintln!("ox86: the guest halted with interrupts disabled");
            ExitCode::SUCCESS
        }
        ExitReason::Quit | ExitReason::Paused => ExitCode::SUCCESS,
        ExitReason::Breakpoint(_)
        | ExitReason::Watchpoint { .. }
        | ExitReason::Reached
        | ExitReason::Stepped
        | ExitReason::TimeUp
        | ExitReason::HistoryStart => ExitCode::SUCCESS,
        ExitReason::ReplayEnd => {
            eprintln!("ox86: replay complete at instruction {}", m_icount);
            ExitCode::SUCCESS
        }
        ExitReason::InstructionLimit => {
            eprintln!("ox86: instruction limit reached");
            ExitCode::from(3)
        }
    })
}
