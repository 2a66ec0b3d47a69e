//! The host terminal as the guest's serial console: raw mode while the guest runs
//! (restored on every exit path by a guard), stdin forwarded to COM1 from a thread,
//! and QEMU's escape keys: Ctrl-A x quits, Ctrl-A h lists the keys, Ctrl-A c switches
//! between the console and the monitor (the guest paused; lines typed go to the
//! monitor), Ctrl-A Ctrl-A sends a Ctrl-A.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ox86::devices::uart::SerialInput;

const CTRL_A: u8 = 0x01;

/// Restores the terminal when dropped.
pub struct RawModeGuard {
    active: bool,
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        if self.active {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// Puts the terminal in raw mode if stdin is one.
pub fn raw_mode() -> RawModeGuard {
    let tty = std::io::stdin().is_terminal();
    let active = tty && crossterm::terminal::enable_raw_mode().is_ok();
    RawModeGuard { active }
}

/// What the escape state machine makes of input bytes.
#[derive(Debug, Default)]
pub struct Escapes {
    after_ctrl_a: bool,
}

/// An action the console takes besides forwarding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward these bytes to the guest.
    Send(Vec<u8>),
    /// Quit the emulator.
    Quit,
    /// Show the escape keys.
    Help,
    /// Switch between the console and the monitor.
    Monitor,
}

impl Escapes {
    /// Processes a chunk of host input.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        let mut send = Vec::new();
        for &b in bytes {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b'x' | b'X' => {
                        if !send.is_empty() {
                            out.push(Action::Send(std::mem::take(&mut send)));
                        }
                        out.push(Action::Quit);
                        return out;
                    }
                    b'h' | b'H' | b'?' => {
                        if !send.is_empty() {
                            out.push(Action::Send(std::mem::take(&mut send)));
                        }
                        out.push(Action::Help);
                    }
                    b'c' | b'C' => {
                        if !send.is_empty() {
                            out.push(Action::Send(std::mem::take(&mut send)));
                        }
                        out.push(Action::Monitor);
                    }
                    CTRL_A => send.push(CTRL_A),
                    _ => {}
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                send.push(b);
            }
        }
        if !send.is_empty() {
            out.push(Action::Send(send));
        }
        out
    }
}

/// The escape-key help text.
pub const HELP: &str = "C-a h    print this help\r\nC-a x    exit emulator\r\nC-a c    switch between console and monitor\r\nC-a C-a  sends C-a\r\n";

/// What the console thread sends the monitor when Ctrl-A c opens it (after setting
/// `pause`); the lines typed follow.
pub const MONITOR_OPEN: &str = "\u{1}open";

/// Where monitor lines go: the run is paused through `pause` and [`MONITOR_OPEN`] sent,
/// then each line typed is sent on `lines` (`c` when the user switches back to the
/// console). The monitor clears `pause` when it lets the guest go on.
pub struct MonitorLink {
    /// Stops the machine at its next slice boundary.
    pub pause: Arc<AtomicBool>,
    /// The lines typed.
    pub lines: std::sync::mpsc::Sender<String>,
}

/// Writes `text` to the terminal with CR LF line ends (it is in raw mode).
pub fn print_raw(text: &str) {
    let mut o = std::io::stdout();
    let _ = o.write_all(text.replace('\n', "\r\n").as_bytes());
    let _ = o.flush();
}

/// Starts the thread that forwards stdin to the guest's COM1, sets `quit` on Ctrl-A x,
/// and on Ctrl-A c sends the lines typed to the monitor.
pub fn spawn_input(input: SerialInput, quit: Arc<AtomicBool>, monitor: MonitorLink) {
    std::thread::Builder::new()
        .name("ox86-console".into())
        .spawn(move || {
            let mut esc = Escapes::default();
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            // The line being typed to the monitor, while it has the keyboard.
            let mut line: Option<Vec<u8>> = None;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for a in esc.feed(&buf[..n]) {
                    match a {
                        Action::Monitor => {
                            if line.take().is_some() {
                                print_raw("\n");
                                let _ = monitor.lines.send("c".into());
                            } else {
                                line = Some(Vec::new());
                                monitor.pause.store(true, Ordering::Relaxed);
                                if monitor.lines.send(MONITOR_OPEN.into()).is_err() {
                                    return;
                                }
                            }
                        }
                        Action::Send(bytes) if line.is_some() => {
                            let Some(l) = line.as_mut() else { continue };
                            let mut leave = false;
                            for b in bytes {
                                match b {
                                    b'\r' | b'\n' => {
                                        print_raw("\n");
                                        let text = String::from_utf8_lossy(l).trim().to_string();
                                        l.clear();
                                        leave = matches!(text.as_str(), "c" | "cont" | "continue");
                                        if monitor.lines.send(text).is_err() {
                                            return;
                                        }
                                        if leave {
                                            break;
                                        }
                                    }
                                    0x7f | 0x08 if l.pop().is_some() => {
                                        print_raw("\x08 \x08");
                                    }
                                    0x7f | 0x08 => {}
                                    b if (0x20..0x7f).contains(&b) => {
                                        l.push(b);
                                        print_raw(&(b as char).to_string());
                                    }
                                    _ => {}
                                }
                            }
                            if leave {
                                line = None;
                            }
                        }
                        Action::Send(bytes) => {
                            let mut rest = &bytes[..];
                            while !rest.is_empty() {
                                let k = input.push(rest);
                                rest = &rest[k..];
                                if !rest.is_empty() {
                                    // The guest is not reading: wait for room.
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                                if quit.load(Ordering::Relaxed) {
                                    return;
                                }
                            }
                        }
                        Action::Help => {
                            let mut e = std::io::stderr();
                            let _ = e.write_all(HELP.as_bytes());
                            let _ = e.flush();
                        }
                        Action::Quit => {
                            quit.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        })
        .expect("spawn the console thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_in_qemu() {
        let mut e = Escapes::default();
        assert_eq!(e.feed(b"ls\r"), vec![Action::Send(b"ls\r".to_vec())]);
        assert_eq!(
            e.feed(&[b'a', CTRL_A, CTRL_A, b'b']),
            vec![Action::Send(vec![b'a', CTRL_A, b'b'])]
        );
        assert_eq!(
            e.feed(&[b'q', CTRL_A, b'h']),
            vec![Action::Send(b"q".to_vec()), Action::Help]
        );
        assert_eq!(
            e.feed(&[b'a', CTRL_A, b'c']),
            vec![Action::Send(b"a".to_vec()), Action::Monitor]
        );
        // Ctrl-A split across reads.
        assert_eq!(e.feed(&[CTRL_A]), vec![]);
        assert_eq!(e.feed(b"x"), vec![Action::Quit]);
        // Unknown escapes are swallowed.
        assert_eq!(
            e.feed(&[CTRL_A, b'z', b'1']),
            vec![Action::Send(b"1".to_vec())]
        );
    }
}
