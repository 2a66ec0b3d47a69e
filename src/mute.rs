//! The guest's console output, muted while the debugger's history re-executes what
//! the guest printed before (see [`crate::history`]): the user saw it once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A writer that drops what is written while its flag is set.
pub(crate) struct Mutable {
    inner: Box<dyn Write + Send>,
    muted: Arc<AtomicBool>,
}

impl Mutable {
    /// `inner`, muted while `muted` is set.
    pub fn new(inner: Box<dyn Write + Send>, muted: Arc<AtomicBool>) -> Mutable {
        Mutable { inner, muted }
    }
}

impl Write for Mutable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.muted.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drops_output_while_muted() {
        let buf = Buf::default();
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = Mutable::new(Box::new(buf.clone()), flag.clone());
        w.write_all(b"seen ").unwrap();
        flag.store(true, Ordering::Relaxed);
        w.write_all(b"again ").unwrap();
        flag.store(false, Ordering::Relaxed);
        w.write_all(b"new").unwrap();
        assert_eq!(&*buf.0.lock().unwrap(), b"seen new");
    }
}
