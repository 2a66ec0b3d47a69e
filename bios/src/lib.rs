//! ox86 bios crate.
