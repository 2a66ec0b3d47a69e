//! `ox86 trace`: reading the instruction traces `run --trace` writes. Every command
//! streams the file (one chunk in memory at a time).

mod decode;
mod diff;
mod dump;
mod export;
mod flame;
mod hot;
mod info;
mod stats;
mod symbols;
mod walk;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

/// The trace commands.
#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// Header, instruction count, events and size of a trace.
    Info {
        /// The trace file.
        file: PathBuf,
    },
    /// Disassembly of the instructions traced, with their instruction counts, and the
    /// events between them.
    Dump(dump::DumpArgs),
    /// The instruction mix: by mnemonic and by class, per ring, per mode, per address
    /// space (CR3).
    Stats {
        /// The trace file.
        file: PathBuf,
        /// Rows shown per table.
        #[arg(long, default_value = "25")]
        top: usize,
    },
    /// Hot functions and blocks, ranked by instructions, named from symbol files.
    Hot {
        /// The trace file.
        file: PathBuf,
        /// ELF files (symbol tables and DWARF lines) and Linux System.map files.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        symbols: Vec<PathBuf>,
        /// Rows shown per table.
        #[arg(long, default_value = "25")]
        top: usize,
    },
    /// A flame graph of the call stacks rebuilt from the trace's calls and returns.
    Flame {
        /// The trace file.
        file: PathBuf,
        /// ELF files (symbol tables and DWARF lines) and Linux System.map files.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        symbols: Vec<PathBuf>,
        /// Where the SVG (or with --folded the folded stacks) goes.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Write folded stacks ("frame;frame;... count" lines, for speedscope and
        /// other viewers) instead of an SVG.
        #[arg(long)]
        folded: bool,
    },
    /// The trace as a Parquet table: one row per instruction (instruction count,
    /// address, physical address, CR3, ring, mnemonic, length, and the memory
    /// accesses when recorded), or per block.
    Export(export::ExportArgs),
    /// The first instruction where two traces part, with both sides' context (exit
    /// status 0: the same, 1: they part, 2: one cannot be read).
    Diff {
        /// One trace.
        a: PathBuf,
        /// The other.
        b: PathBuf,
    },
}

/// Runs a trace command.
pub fn run(cmd: TraceCmd) -> Result<ExitCode> {
    // A reader that goes away (`ox86 trace stats F | head`) ends the command quietly,
    // as it ends `cat` (Rust's runtime ignores SIGPIPE, and printing would panic).
    // SAFETY: sets the default disposition of one signal, with no handler; nothing
    // else in the process changes signal dispositions meanwhile.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match cmd {
        TraceCmd::Info { file } => info::run(&file),
        TraceCmd::Dump(a) => dump::run(&a),
        TraceCmd::Stats { file, top } => stats::run(&file, top),
        TraceCmd::Hot { file, symbols, top } => hot::run(&file, &symbols, top),
        TraceCmd::Flame {
            file,
            symbols,
            output,
            folded,
        } => flame::run(&file, &symbols, &output, folded),
        TraceCmd::Diff { a, b } => diff::run(&a, &b),
        TraceCmd::Export(a) => export::run(&a),
    }
}
