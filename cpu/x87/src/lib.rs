//! ox86's x87 FPU.
