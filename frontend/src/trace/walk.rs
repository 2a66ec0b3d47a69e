//! Reading a trace for a command: the records with the context they run in, progress
//! on a terminal for a read that takes more than a second, and the one-line error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ox86::trace::{Record, TraceError, TraceReader};

/// How long a command reads before it shows its progress.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// The context instructions run in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ctx {
    /// CR3.
    pub cr3: u64,
    /// CPL.
    pub cpl: u8,
    /// The mode: 0 real, 1 16-bit protected, 2 32-bit protected, 3 V86.
    pub mode: u8,
}

impl Ctx {
    /// The mode's name.
    pub fn mode_name(&self) -> &'static str {
        [
            "real mode",
            "16-bit protected mode",
            "32-bit protected mode",
            "V86 mode",
        ][usize::from(self.mode & 3)]
    }
}

/// The mode of a context record's CR0 and flags (see [`Ctx::mode`]).
pub fn mode_of(cr0: u64, flags: u8) -> u8 {
    match (cr0 & 1 != 0, flags & 1 != 0, flags & 2 != 0) {
        (false, _, _) => 0,
        (true, true, _) => 3,
        (true, false, true) => 2,
        (true, false, false) => 1,
    }
}

/// A trace being read.
pub struct Walk {
    /// The reader.
    pub r: TraceReader,
    /// The context now.
    pub ctx: Ctx,
    path: PathBuf,
    size: u64,
    start: Instant,
    bar: Option<ProgressBar>,
    n: u32,
}

impl Walk {
    /// Opens trace `path`.
    pub fn open(path: &Path) -> Result<Walk, TraceError> {
        let r = TraceReader::open(path)?;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(Walk {
            r,
            ctx: Ctx::default(),
            path: path.to_path_buf(),
            size,
            start: Instant::now(),
            bar: None,
            n: 0,
        })
    }

    /// The next record (the context follows the trace's context records).
    pub fn next(&mut self) -> Result<Option<Record>, TraceError> {
        self.n = self.n.wrapping_add(1);
        if self.n & 0xffff == 0 {
            self.progress();
        }
        let rec = self.r.next_record()?;
        if let Some(Record::Context {
            cr0,
            cr3,
            cpl,
            flags,
            ..
        }) = rec
        {
            self.ctx = Ctx {
                cr3,
                cpl,
                mode: mode_of(cr0, flags),
            };
        }
        if rec.is_none() {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
        }
        Ok(rec)
    }

    fn progress(&mut self) {
        if self.bar.is_none() && self.start.elapsed() >= QUIET_FOR {
            let b = ProgressBar::with_draw_target(Some(self.size), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(format!("reading {}", self.path.display()));
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_position(self.r.offset());
        }
    }

    /// Reports error `e` in one line; the exit code for it.
    pub fn fail(&mut self, e: &TraceError) -> ExitCode {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!("ox86: trace {}: {e}", self.path.display());
        ExitCode::from(1)
    }
}

/// Opens trace `path` for a command, or reports why not.
pub fn open(path: &Path) -> Result<Walk> {
    Walk::open(path).map_err(|e| {
        if e.what.starts_with("cannot open") {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::anyhow!("trace {}: {e}", path.display())
        }
    })
}
