//! Guest programs (tests/guests) run through `ox86 run` as a user would: real mode,
//! protected mode, paging, rings, interrupts and faults, V86, debug exceptions and
//! breakpoints, #AC and x87 IRQ 13, and a bare-metal C program whose output must
//! equal the same C code run natively on the host.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{engine_name, engines, guests_dir, run_ox86, text};

/// Runs a self-checking guest on both engines and asserts it printed PASS and exited
/// with status 33 on each; returns the output (the same on both).
fn run_checked(name: &str) -> String {
    let outs: Vec<String> = engines()
        .iter()
        .map(|e| run_checked_on(name, e).0)
        .collect();
    assert!(
        outs.iter().all(|o| *o == outs[0]),
        "{name}: the JIT and the interpreter print differently"
    );
    outs[0].clone()
}

/// Runs a self-checking guest with `engine`'s arguments and asserts it passed:
/// (stdout, stderr).
fn run_checked_on(name: &str, engine: &[&str]) -> (String, String) {
    let k = guests_dir().join(format!("{name}.elf"));
    let mut args = vec!["run", "--kernel", k.to_str().unwrap(), "-m", "32M"];
    args.extend_from_slice(engine);
    let out = run_ox86(&args, Duration::from_secs(120));
    let name = format!("{name} ({})", engine_name(engine));
    let so = text(&out.stdout);
    let se = text(&out.stderr);
    let fails: Vec<&str> = so.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "{name}: failing checks:\n{}\n--- full output:\n{so}\n--- stderr:\n{se}",
        fails.join("\n")
    );
    assert_eq!(
        so.lines().last(),
        Some("PASS"),
        "{name}: no PASS line\n{so}\n--- stderr:\n{se}"
    );
    assert_eq!(
        out.status.code(),
        Some(33),
        "{name}: exit status\n{so}\n--- stderr:\n{se}"
    );
    (so, se)
}

#[test]
fn modes_real_protected_paging() {
    run_checked("modes");
}

#[test]
fn rings_gates_tasks_faults() {
    run_checked("rings");
}

#[test]
fn v86_mode() {
    run_checked("v86");
}

#[test]
fn debug_single_step_breakpoints() {
    run_checked("debug");
}

/// #AC and x87 errors through IRQ 13 (CR0.NE=0): checked against the SDM only, as
/// QEMU does not implement #AC and aborts on FERR# (see tests/guests/align.asm).
#[test]
fn align_check_and_x87_irq13() {
    run_checked("align");
}

/// Pages of data that share a TLB index (tests/guests/tlbways.asm): the right values on
/// both engines, and a loop alternating between two such pages does not miss the TLB
/// on every access (it did with a direct-mapped TLB: 403,015 misses, each of which
/// left compiled code; with two ways, about 3,000, nearly all from the three-page loop).
#[test]
fn tlb_ways() {
    run_checked("tlbways");
    for engine in engines() {
        let with_stats = [engine, &["--stats"]].concat();
        let (_, se) = run_checked_on("tlbways", &with_stats);
        let misses: u64 = se
            .split("TLB misses ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no TLB misses in --stats:\n{se}"));
        assert!(
            misses < 20_000,
            "tlbways ({}): {misses} TLB misses",
            engine_name(engine)
        );
    }
}

#[test]
fn c_program_matches_native() {
    let guest = run_checked("c");
    let native = Command::new(guests_dir().join("cprog-native"))
        .output()
        .expect("run cprog-native");
    assert!(native.status.success());
    let native = text(&native.stdout);
    let start = guest
        .find("cprog start")
        .expect("guest printed 'cprog start'");
    assert_eq!(
        &guest[start..],
        native,
        "guest output differs from the native run of the same C code"
    );
}

/// Every guest program in lockstep: the JIT and the interpreter compared after every
/// slice (registers, flags, segments, x87 state, instruction count, all of RAM).
#[test]
fn guests_in_lockstep() {
    for name in ["modes", "rings", "v86", "debug", "align", "tlbways", "c"] {
        let k = guests_dir().join(format!("{name}.elf"));
        let out = run_ox86(
            &[
                "run",
                "--kernel",
                k.to_str().unwrap(),
                "-m",
                "32M",
                "--lockstep",
            ],
            Duration::from_secs(120),
        );
        assert_eq!(
            out.status.code(),
            Some(33),
            "{name} in lockstep:\n{}\n--- stderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}
