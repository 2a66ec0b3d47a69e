//! The translation cache on disk (`--jit-cache`) as a user meets it: a second run
//! loads what the first compiled and prints the same; a corrupt cache is detected
//! entry by entry and compiled again, never run; several processes share one cache.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{guests_dir, run_ox86, text};

/// What `--stats` said of the JIT: (regions compiled, loaded, bad entries dropped).
fn jit_stats(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ox86 jit:"))
        .unwrap_or_else(|| panic!("no JIT statistics in:\n{stderr}"));
    let before = |marker: &str| -> u64 {
        let i = line
            .find(marker)
            .unwrap_or_else(|| panic!("'{marker}' not in {line}"));
        let head = line[..i].trim_end();
        let start = head
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |k| k + 1);
        head[start..]
            .parse()
            .unwrap_or_else(|_| panic!("no number before '{marker}' in {line}"))
    };
    (
        before("regions compiled"),
        before("loaded from the translation cache"),
        before("bad entries dropped"),
    )
}

/// Runs the bare-metal C program with the cache in `dir`: (stdout, JIT statistics).
fn run_c(dir: &Path) -> (String, (u64, u64, u64)) {
    let (so, se) = run_guest(dir, "c.elf");
    (so, jit_stats(&se))
}

/// Runs bare-metal guest `name` (which ends with PASS) with the cache in `dir`:
/// (stdout, stderr).
fn run_guest(dir: &Path, name: &str) -> (String, String) {
    let k = guests_dir().join(name);
    let args = [
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "-m",
        "32M",
        "--stats",
        "--jit-cache",
        dir.to_str().unwrap(),
    ];
    let out = run_ox86(&args, Duration::from_secs(120));
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(33), "{so}\n--- stderr:\n{se}");
    assert_eq!(so.lines().last(), Some("PASS"), "{so}\n--- stderr:\n{se}");
    (so, se)
}

/// The regions `--stats` says the idle compiler optimised.
fn idle_optimised(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ox86 jit:"))
        .unwrap_or_else(|| panic!("no JIT statistics in:\n{stderr}"));
    let i = line
        .find(" of those by the idle compiler")
        .unwrap_or_else(|| panic!("no idle compiler count in {line}"));
    let head = &line[..i];
    let start = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |k| k + 1);
    head[start..].parse().unwrap()
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ox86-jitcache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every entry file under `dir` (one directory per translator version).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(dir).unwrap() {
        for e in std::fs::read_dir(d.unwrap().path()).unwrap() {
            v.push(e.unwrap().path());
        }
    }
    v.sort();
    v
}

/// The inode of each file (a file replaced by a rename gets another).
fn inodes(files: &[PathBuf]) -> Vec<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| std::fs::metadata(f).ok().map(|m| m.ino()))
        .collect()
}

#[test]
fn second_run_loads_and_a_corrupt_cache_is_never_run() {
    let dir = fresh_dir("corrupt");
    let (first, (compiled, loaded, bad)) = run_c(&dir);
    assert!(compiled > 0, "nothing compiled");
    assert_eq!((loaded, bad), (0, 0), "an empty cache served something");
    let files = entries(&dir);
    assert!(!files.is_empty(), "nothing stored");

    // The second run compiles none of the regions the first stored (an entry
    // compiled again would be a new file under the same name), and loads some. How
    // many it loads depends on the compiler threads' timing: a region still queued
    // when the first run ended is compiled by the second.
    let before = inodes(&files);
    let (second, (_, loaded2, bad2)) = run_c(&dir);
    assert_eq!(second, first);
    assert!(loaded2 > 0, "nothing loaded");
    assert_eq!(inodes(&files), before, "an entry was compiled again");
    assert_eq!(bad2, 0);

    // One byte flipped in every entry, each at another place (header, code, fixups,
    // checksum): every entry the run looks up is dropped and compiled again. (Every
    // entry there is now: on two cores the second run may have stored optimised code
    // its idle compiler made.)
    for (i, f) in entries(&dir).iter().enumerate() {
        let mut b = std::fs::read(f).unwrap();
        let at = (i * 7919) % b.len();
        b[at] ^= 1 << (i % 8);
        std::fs::write(f, &b).unwrap();
    }
    let (third, (compiled3, loaded3, bad3)) = run_c(&dir);
    assert_eq!(third, first, "a corrupt cache changed the guest's output");
    assert!(
        bad3 > 0 && compiled3 > 0,
        "{bad3} dropped, {compiled3} compiled"
    );
    // What it loaded, it stored itself after compiling (a region asked for again).
    assert!(loaded3 < loaded2, "{loaded3} loaded from a corrupt cache");

    // Truncated and empty entries too; the entries compiled again replace them (those
    // the run looks up: which regions are asked for depends on the compiler thread's
    // timing).
    for f in entries(&dir) {
        let b = std::fs::read(&f).unwrap();
        std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    }
    if let Some(f) = entries(&dir).first() {
        std::fs::write(f, b"").unwrap();
    }
    let (fourth, (_, loaded4, bad4)) = run_c(&dir);
    assert_eq!(fourth, first);
    assert_eq!(loaded4, 0);
    assert!(bad4 > 0);
    let (fifth, (_, loaded5, _)) = run_c(&dir);
    assert_eq!(fifth, first);
    assert!(loaded5 > 0, "nothing loaded after the repair");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn processes_share_one_cache() {
    let dir = fresh_dir("shared");
    let outs: Vec<(String, (u64, u64, u64))> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| run_c(&dir))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(outs.iter().all(|o| o.0 == outs[0].0));
    assert!(outs.iter().all(|o| o.1 .2 == 0), "a bad entry: {outs:?}");
    // No temporary file is left, and a later run finds the entries.
    assert!(entries(&dir).iter().all(|f| !f
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with('.')));
    let (later, (_, loaded, bad)) = run_c(&dir);
    assert_eq!(later, outs[0].0);
    assert!(loaded > 0 && bad == 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// On two cores, the compiler optimises quick regions while it has nothing else to do,
/// and stores them: the next run loads them optimised and finds nothing left to
/// optimise. On one core (where a compilation would take the guest's time) it does
/// not.
#[test]
fn an_idle_compiler_optimises_for_the_next_run() {
    let dir = fresh_dir("idle");
    let (first, se1) = run_guest(&dir, "bench.elf");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let idle1 = idle_optimised(&se1);
    if cores < 2 {
        assert_eq!(idle1, 0, "optimised in the background on one core:\n{se1}");
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    assert!(idle1 > 0, "the idle compiler optimised nothing:\n{se1}");
    let optimised: Vec<PathBuf> = entries(&dir)
        .into_iter()
        .filter(|f| f.to_str().unwrap().contains("-t1-"))
        .collect();
    assert!(!optimised.is_empty(), "no optimised entry stored");
    let before = inodes(&optimised);
    let (second, se2) = run_guest(&dir, "bench.elf");
    assert_eq!(second, first);
    let (compiled2, loaded2, bad2) = jit_stats(&se2);
    assert!(loaded2 > 0 && bad2 == 0, "{se2}");
    // The optimised entries were loaded, not made again.
    assert_eq!(
        inodes(&optimised),
        before,
        "an optimised entry was compiled again"
    );
    assert!(
        compiled2 < idle1,
        "the second run compiled {compiled2} regions, the first optimised {idle1} when idle"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
