//! ox86 devices crate.
