//! ox86's x87 FPU: a Pentium-Pro-class floating-point unit with true 80-bit
//! extended precision.
//!
//! The CPU decodes with iced-x86 and hands each x87 instruction to
//! [`X87State::execute`] together with an [`X87Context`] that performs memory
//! accesses at the instruction's (already resolved) memory operand.
//!
//! Basic arithmetic (add, subtract, multiply, divide, square root), conversions
//! and rounding are exact integer algorithms followed by a single rounding step
//! ([`round`]) that implements precision control, the four rounding modes, the
//! C1 round-up bit and the x87 overflow/underflow rules. Transcendentals are
//! evaluated in rustc_apfloat's 113-bit `Quad` and rounded once.
#![forbid(unsafe_code)]

pub mod arith;
pub mod compare;
mod context;
pub mod convert;
pub mod env;
mod exec;
pub mod fast;
pub mod float;
pub mod ops;
pub mod prem;
pub mod round;
pub mod scale;
mod state;
pub mod status;
pub mod transcendental;

pub use context::{X87Context, X87Error};
pub use exec::{fop_of, sti_of};
pub use float::{Class, F80};
pub use state::{X87State, FCW_INIT, MXCSR_INIT, MXCSR_MASK_INIT};
