//! The GDB remote stub, with the gdbstub crate: registers (see [`regs`]), memory by
//! virtual address through the guest's paging, breakpoints and hardware breakpoints,
//! read, write and access watchpoints (all kept by the engine, any number of them),
//! single steps, Ctrl-C, reverse step and continue over the debugger's history (see
//! [`crate::history`]), and `monitor` commands.
//!
//! [`serve`] runs one GDB session on a connection: the machine runs only while GDB
//! lets it, in pieces of at most [`POLL`] of host time, between which the connection
//! is looked at, so that Ctrl-C stops the guest at once even in compiled loops.

mod regs;

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::{run_blocking, DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::reverse_exec::ReplayLogPosition;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadSingleStep,
};
use gdbstub::target::ext::breakpoints::{self as bp, WatchKind};
use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput};
use gdbstub::target::{Target, TargetError, TargetResult};
use ox86_cpu::{WatchKind as Kind, Watchpoint};

use crate::error::MachineError;
use crate::machine::{ExitReason, Machine};
use crate::monitor::MonitorReply;
pub use regs::{target_xml, Regs, X86System};

/// The longest the guest runs before the connection is looked at again.
pub const POLL: Duration = Duration::from_millis(10);

/// How a GDB session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// GDB detached or disconnected: the guest goes on without it.
    Detached,
    /// GDB killed the guest, or the host asked to quit.
    Kill,
    /// The guest ended the run (its exit, a reset with `no_reboot`, a halt for good).
    Exited(ExitReason),
}

/// What GDB asked the guest to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    Continue,
    Step,
    ReverseContinue,
    ReverseStep,
}

/// The machine as GDB's target.
pub struct GdbTarget<'a> {
    m: &'a mut Machine,
    resume: Resume,
    /// The run's end, once the guest ended it.
    exited: Option<ExitReason>,
    /// A machine error while running (ends the session).
    error: Option<MachineError>,
}

/// The target's error: a machine error, reported to GDB as a fatal error.
#[derive(Debug)]
pub struct GdbError(pub String);

impl Target for GdbTarget<'_> {
    type Arch = X86System;
    type Error = GdbError;

    fn base_ops(&mut self) -> gdbstub::target::ext::base::BaseOps<'_, X86System, GdbError> {
        gdbstub::target::ext::base::BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<bp::BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(
        &mut self,
    ) -> Option<gdbstub::target::ext::monitor_cmd::MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<
        gdbstub::target::ext::target_description_xml_override::TargetDescriptionXmlOverrideOps<
            '_,
            Self,
        >,
    > {
        Some(self)
    }
}

impl SingleThreadBase for GdbTarget<'_> {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        *regs = Regs::of(&self.m.cpu.state);
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        regs.apply(&mut self.m.cpu.state);
        Ok(())
    }

    fn read_addrs(&mut self, start: u32, data: &mut [u8]) -> TargetResult<usize, Self> {
        let n = self.m.read_virtual(start as u64, data);
        if n == 0 && !data.is_empty() {
            // Nothing mapped there: GDB says "Cannot access memory".
            return Err(TargetError::Errno(14));
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start: u32, data: &[u8]) -> TargetResult<(), Self> {
        if self.m.write_virtual(start as u64, data) != data.len() {
            return Err(TargetError::Errno(14));
        }
        Ok(())
    }

    fn support_resume(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for GdbTarget<'_> {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), GdbError> {
        if signal.is_some() {
            return Err(GdbError("a guest takes no signals".into()));
        }
        self.resume = Resume::Continue;
        Ok(())
    }

    fn support_single_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_cont(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::reverse_exec::ReverseContOps<'_, (), Self>> {
        self.m.history.is_some().then_some(self)
    }

    fn support_reverse_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::reverse_exec::ReverseStepOps<'_, (), Self>> {
        self.m.history.is_some().then_some(self)
    }
}

impl SingleThreadSingleStep for GdbTarget<'_> {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), GdbError> {
        if signal.is_some() {
            return Err(GdbError("a guest takes no signals".into()));
        }
        self.resume = Resume::Step;
        Ok(())
    }
}

impl gdbstub::target::ext::base::reverse_exec::ReverseCont<()> for GdbTarget<'_> {
    fn reverse_cont(&mut self) -> Result<(), GdbError> {
        self.resume = Resume::ReverseContinue;
        Ok(())
    }
}

impl gdbstub::target::ext::base::reverse_exec::ReverseStep<()> for GdbTarget<'_> {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), GdbError> {
        self.resume = Resume::ReverseStep;
        Ok(())
    }
}

impl bp::Breakpoints for GdbTarget<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<bp::SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<bp::HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<bp::HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl bp::SwBreakpoint for GdbTarget<'_> {
    fn add_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.m.add_breakpoint(addr as u64);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.m.remove_breakpoint(addr as u64))
    }
}

// Hardware breakpoints are the same engine breakpoints, without a limit of four.
impl bp::HwBreakpoint for GdbTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.m.add_breakpoint(addr as u64);
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.m.remove_breakpoint(addr as u64))
    }
}

fn watchpoint(addr: u32, len: u32, kind: WatchKind) -> Watchpoint {
    Watchpoint {
        addr: addr as u64,
        len: len.max(1) as u64,
        kind: match kind {
            WatchKind::Write => Kind::Write,
            WatchKind::Read => Kind::Read,
            WatchKind::ReadWrite => Kind::Access,
        },
    }
}

impl bp::HwWatchpoint for GdbTarget<'_> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        self.m.add_watchpoint(watchpoint(addr, len, kind));
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.m.remove_watchpoint(watchpoint(addr, len, kind)))
    }
}

impl gdbstub::target::ext::target_description_xml_override::TargetDescriptionXmlOverride
    for GdbTarget<'_>
{
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::NonFatal);
        }
        let xml = target_xml(&self.m.cpu.state);
        let bytes = xml.as_bytes();
        let start = (offset as usize).min(bytes.len());
        let end = start
            .saturating_add(length)
            .min(bytes.len())
            .min(start + buf.len());
        buf[..end - start].copy_from_slice(&bytes[start..end]);
        Ok(end - start)
    }
}

impl gdbstub::target::ext::monitor_cmd::MonitorCmd for GdbTarget<'_> {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), GdbError> {
        let Ok(cmd) = std::str::from_utf8(cmd) else {
            outputln!(out, "monitor commands are text");
            return Ok(());
        };
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if let ["goto", n] = words.as_slice() {
            let Some(n) = crate::monitor::parse_number(n) else {
                outputln!(out, "goto needs an instruction count");
                return Ok(());
            };
            let mut report = |at: u64| {
                outputln!(out, "... instruction {at}");
                out.flush();
            };
            let r = self.m.goto_reporting(n, &mut report);
            match r {
                Ok(ExitReason::Reached) => outputln!(
                    out,
                    "at instruction {} (EIP {:08x}); GDB's view is refreshed by the next stop: use stepi, or flushregs",
                    self.m.icount(),
                    self.m.cpu.state.rip
                ),
                Ok(r) => outputln!(out, "stopped at instruction {}: {r:?}", self.m.icount()),
                Err(e) => outputln!(out, "{e}"),
            }
            return Ok(());
        }
        match self.m.monitor(cmd) {
            MonitorReply::Text(t) => {
                for line in t.lines() {
                    outputln!(out, "{line}");
                }
            }
            MonitorReply::Continue => outputln!(out, "use GDB's continue"),
            MonitorReply::Quit => {
                self.m.quit_flag().store(true, Ordering::Relaxed);
                outputln!(out, "ox86 quits at the next continue");
            }
        }
        Ok(())
    }
}

/// The stop GDB is told of for a run's end reason; None: the run goes on.
fn stop_reason(r: ExitReason, resume: Resume) -> Option<SingleThreadStopReason<u32>> {
    Some(match r {
        ExitReason::Breakpoint(_) => SingleThreadStopReason::SwBreak(()),
        ExitReason::Watchpoint { watch, write } => SingleThreadStopReason::Watch {
            tid: (),
            kind: match (watch.kind, write) {
                (Kind::Write, _) => WatchKind::Write,
                (Kind::Read, _) => WatchKind::Read,
                (Kind::Access, _) => WatchKind::ReadWrite,
            },
            addr: watch.addr as u32,
        },
        ExitReason::Stepped => SingleThreadStopReason::DoneStep,
        ExitReason::HistoryStart => SingleThreadStopReason::ReplayLog {
            tid: None,
            pos: ReplayLogPosition::Begin,
        },
        ExitReason::Paused if resume == Resume::Step => SingleThreadStopReason::DoneStep,
        ExitReason::Paused => SingleThreadStopReason::Signal(Signal::SIGINT),
        ExitReason::GuestExit(status) => SingleThreadStopReason::Exited(status as u8),
        ExitReason::Reset | ExitReason::Halted | ExitReason::ReplayEnd => {
            SingleThreadStopReason::Exited(0)
        }
        ExitReason::Quit => SingleThreadStopReason::Terminated(Signal::SIGKILL),
        ExitReason::InstructionLimit => SingleThreadStopReason::Exited(3),
        ExitReason::Reached | ExitReason::TimeUp => return None,
    })
}

/// The event loop of a session: runs the guest as GDB asked, watching the connection.
struct EventLoop<'a>(std::marker::PhantomData<&'a ()>);

impl<'a> run_blocking::BlockingEventLoop for EventLoop<'a> {
    type Target = GdbTarget<'a>;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u32>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        t: &mut GdbTarget<'a>,
        conn: &mut TcpStream,
    ) -> Result<
        run_blocking::Event<SingleThreadStopReason<u32>>,
        run_blocking::WaitForStopReasonError<GdbError, std::io::Error>,
    > {
        use run_blocking::{Event, WaitForStopReasonError as E};
        let fail = |t: &mut GdbTarget<'a>, e: MachineError| {
            let msg = e.to_string();
            t.error = Some(e);
            E::Target(GdbError(msg))
        };
        let resume = std::mem::replace(&mut t.resume, Resume::Continue);
        let once = match resume {
            Resume::Step => Some(t.m.step()),
            Resume::ReverseStep => Some(t.m.reverse_step()),
            Resume::ReverseContinue => Some(t.m.reverse_continue()),
            Resume::Continue => None,
        };
        if let Some(r) = once {
            let r = r.map_err(|e| fail(t, e))?;
            let stop = stop_reason(r, resume).unwrap_or(SingleThreadStopReason::DoneStep);
            if matches!(stop, SingleThreadStopReason::Exited(_)) {
                t.exited = Some(r);
            }
            return Ok(Event::TargetStopped(stop));
        }
        loop {
            if t.m.quit_flag().load(Ordering::Relaxed) {
                t.exited = Some(ExitReason::Quit);
                return Ok(Event::TargetStopped(SingleThreadStopReason::Terminated(
                    Signal::SIGKILL,
                )));
            }
            let r =
                t.m.run_until(None, Some(Instant::now() + POLL))
                    .map_err(|e| fail(t, e))?;
            if let Some(stop) = stop_reason(r, resume) {
                if matches!(
                    stop,
                    SingleThreadStopReason::Exited(_) | SingleThreadStopReason::Terminated(_)
                ) {
                    t.exited = Some(r);
                }
                return Ok(Event::TargetStopped(stop));
            }
            if conn.peek().map(|b| b.is_some()).unwrap_or(true) {
                let byte = conn.read().map_err(E::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
        }
    }

    fn on_interrupt(
        _t: &mut GdbTarget<'a>,
    ) -> Result<Option<SingleThreadStopReason<u32>>, GdbError> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

/// Serves one GDB session on `conn`, the guest stopped until GDB resumes it. Garbage
/// and broken connections end the session, never the process.
pub fn serve(m: &mut Machine, conn: TcpStream) -> Result<SessionEnd, MachineError> {
    let _ = conn.set_nodelay(true);
    let mut t = GdbTarget {
        m,
        resume: Resume::Continue,
        exited: None,
        error: None,
    };
    let r = GdbStub::new(conn).run_blocking::<EventLoop<'_>>(&mut t);
    if let Some(e) = t.error.take() {
        return Err(e);
    }
    if let Some(r) = t.exited {
        return Ok(if r == ExitReason::Quit {
            SessionEnd::Kill
        } else {
            SessionEnd::Exited(r)
        });
    }
    Ok(match r {
        Ok(DisconnectReason::Kill) => SessionEnd::Kill,
        Ok(DisconnectReason::TargetExited(_)) | Ok(DisconnectReason::TargetTerminated(_)) => {
            SessionEnd::Kill
        }
        Ok(DisconnectReason::Disconnect) => SessionEnd::Detached,
        Err(e) => {
            // A client that sent garbage or went away mid-packet: the guest goes on.
            tracing::warn!(target: "ox86::gdb", "GDB session ended: {e:?}");
            SessionEnd::Detached
        }
    })
}
