//! The `ox86` command.
fn main() {}
