//! The `ox86` command: runs a guest (a kernel image, or the built-in demo guest), and
//! reads the traces of its runs.

mod cli;
mod console;
mod gdb;
mod rtc;
mod size;
mod trace;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ox86: {e:#}");
            ExitCode::from(1)
        }
    }
}
