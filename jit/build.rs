//! The translator's version, for the translation cache on disk: a hash of every source
//! file the compiled code's shape depends on (the JIT, the CPU's state and handlers,
//! the MMU's TLB, the FPU), the lock file (Cranelift's version), the compiler and the
//! target. Any change gives a new version, whose cache entries are apart from the old.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = here.parent().expect("the workspace").to_path_buf();
    let dirs = ["jit/src", "cpu/src", "cpu/x87/src", "mmu/src"];
    let mut all = Vec::new();
    for d in dirs {
        let p = root.join(d);
        println!("cargo:rerun-if-changed={}", p.display());
        files(&p, &mut all);
    }
    all.sort();
    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    all.push(lock);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in &all {
        h.update(
            p.strip_prefix(&root)
                .unwrap_or(p)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(&std::fs::read(p).unwrap_or_default());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let v = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    h.update(&v);
    for k in ["TARGET", "PROFILE", "OPT_LEVEL"] {
        h.update(std::env::var(k).unwrap_or_default().as_bytes());
    }
    println!(
        "cargo:rustc-env=OX86_TRANSLATOR_VERSION={:032x}",
        h.digest128()
    );
}
