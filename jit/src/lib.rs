//! ox86 jit crate.
