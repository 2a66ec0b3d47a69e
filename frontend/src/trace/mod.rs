//! `ox86 trace`: reading the instruction traces `run --trace` writes. Every command
//! streams the file (one chunk in memory at a time).

mod decode;
mod dump;
mod info;

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
}

/// Runs a trace command.
pub fn run(cmd: TraceCmd) -> Result<ExitCode> {
    match cmd {
        TraceCmd::Info { file } => info::run(&file),
        TraceCmd::Dump(a) => dump::run(&a),
    }
}
