//! Guest exceptions as values: handlers return `Err(Exception)`, the run loop
//! delivers it through the IVT or IDT.

/// Exception vectors.
pub mod vec {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug.
    pub const DB: u8 = 1;
    /// Non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// Breakpoint (INT3).
    pub const BP: u8 = 3;
    /// Overflow (INTO).
    pub const OF: u8 = 4;
    /// BOUND range exceeded.
    pub const BR: u8 = 5;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Double fault.
    pub const DF: u8 = 8;
    /// Invalid TSS.
    pub const TS: u8 = 10;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating-point error.
    pub const MF: u8 = 16;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// Machine check.
    pub const MC: u8 = 18;
}

/// A guest exception: vector and optional error code. For #PF, CR2 is set by the
/// code that raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    /// The vector (0-31).
    pub vector: u8,
    /// The error code pushed on delivery, if the vector has one.
    pub error_code: Option<u32>,
}

/// Result of an operation that may raise a guest exception.
pub type Fault<T = ()> = Result<T, Exception>;

impl Exception {
    /// An exception without an error code.
    pub const fn new(vector: u8) -> Exception {
        Exception {
            vector,
            error_code: None,
        }
    }
    /// An exception with an error code.
    pub const fn with_code(vector: u8, code: u32) -> Exception {
        Exception {
            vector,
            error_code: Some(code),
        }
    }
    /// #UD.
    pub const UD: Exception = Exception::new(vec::UD);
    /// #DE.
    pub const DE: Exception = Exception::new(vec::DE);
    /// #NM.
    pub const NM: Exception = Exception::new(vec::NM);
    /// #MF.
    pub const MF: Exception = Exception::new(vec::MF);
    /// #GP(code).
    pub const fn gp(code: u32) -> Exception {
        Exception::with_code(vec::GP, code)
    }
    /// #GP(0).
    pub const GP0: Exception = Exception::gp(0);
    /// #SS(code).
    pub const fn ss(code: u32) -> Exception {
        Exception::with_code(vec::SS, code)
    }
    /// #NP(code).
    pub const fn np(code: u32) -> Exception {
        Exception::with_code(vec::NP, code)
    }
    /// #TS(code).
    pub const fn ts(code: u32) -> Exception {
        Exception::with_code(vec::TS, code)
    }

    /// Whether the exception is "contributory" for double-fault purposes.
    pub fn contributory(&self) -> bool {
        matches!(self.vector, vec::DE | vec::TS | vec::NP | vec::SS | vec::GP)
    }

    /// Whether the vector pushes an error code when it is an exception.
    pub fn has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10..=14 | 17 | 21)
    }
}
