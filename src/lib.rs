//! ox86: a full-system x86 emulator.
