//! The GDB server of the command line (`-s`, `-S`, `--gdb tcp:[HOST]:PORT`): it listens
//! from the start, and a connecting GDB stops the guest at the next slice boundary
//! and takes it over until it detaches (see `ox86::gdb`).

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

/// The address of `--gdb tcp:[HOST]:PORT` (QEMU's spelling). With no host it is the
/// loopback interface (QEMU takes every interface): whoever connects can read and
/// write the guest.
pub fn parse_address(spec: &str) -> Result<String> {
    let Some(rest) = spec.strip_prefix("tcp:") else {
        bail!("bad --gdb '{spec}' (use tcp:[HOST]:PORT, e.g. tcp::1234)");
    };
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("bad --gdb '{spec}' (use tcp:[HOST]:PORT)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .with_context(|| format!("bad port in --gdb '{spec}'"))?;
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    Ok(format!("{host}:{port}"))
}

/// The listening GDB server: connections arrive on `conns`; each one also sets the
/// machine's pause flag, so that the run stops for it.
pub struct Server {
    conns: Receiver<TcpStream>,
    /// The address it listens on.
    pub addr: String,
    /// Connections queued and not yet taken.
    queued: Arc<AtomicUsize>,
}

impl Server {
    /// Listens on `addr`; `pause` is the machine's pause flag.
    pub fn listen(addr: &str, pause: Arc<AtomicBool>) -> Result<Server> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen for GDB on {addr}"))?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let count = queued.clone();
        std::thread::Builder::new()
            .name("gdb-listen".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    // Counted before the pause, so that the paused run knows it is
                    // GDB's; the pause before the connection is queued, so that the
                    // server clears it after (see `Server::take`).
                    queued.fetch_add(1, Ordering::SeqCst);
                    pause.store(true, Ordering::SeqCst);
                    if tx.send(conn).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the GDB listener")?;
        Ok(Server {
            conns: rx,
            addr,
            queued: count,
        })
    }

    /// Whether a connection waits to be served.
    pub fn has_pending(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
    }

    /// The connection counted by [`Server::has_pending`], once it is queued.
    pub fn take(&self) -> Option<TcpStream> {
        if !self.has_pending() {
            return None;
        }
        match self.conns.recv() {
            Ok(c) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Some(c)
            }
            Err(_) => None,
        }
    }

    /// Waits for the next connection, or for `quit`.
    pub fn wait(&self, quit: &AtomicBool) -> Option<TcpStream> {
        loop {
            if quit.load(Ordering::Relaxed) {
                return None;
            }
            match self
                .conns
                .recv_timeout(std::time::Duration::from_millis(50))
            {
                Ok(c) => {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Some(c);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_qemu_spelling() {
        assert_eq!(parse_address("tcp::1234").unwrap(), "127.0.0.1:1234");
        assert_eq!(parse_address("tcp:0.0.0.0:99").unwrap(), "0.0.0.0:99");
        assert!(parse_address("1234").is_err());
        assert!(parse_address("tcp::x").is_err());
        assert!(parse_address("tcp:1234").is_err());
    }
}
