//! ox86 cpu crate.
