//! Deterministic fuzzing of every loader: random and mutated images must give
//! `Ok` or `Err`, never a panic, a hang or a huge allocation.

use std::collections::BTreeSet;

use ox86_mmu::Memory;

use crate::elf::load_elf;
use crate::elf::tests::{build_elf32, build_elf64};
use crate::format::{detect, load_kernel};
use crate::linux::load_linux;
use crate::linux::tests::{build_bzimage, Bz};
use crate::multiboot::tests::{mb_elf_kernel, mb_header};
use crate::multiboot::{load_multiboot, Module, HF_AOUT_KLUDGE};
use goblin::elf::program_header::PT_LOAD;

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// An "interesting" 32-bit value: edges, RAM-size neighbourhood, or random.
    fn value(&mut self) -> u32 {
        const EDGES: [u32; 12] = [
            0,
            1,
            0xfff,
            0x1000,
            0x9_fc00,
            0xf_0000,
            0x10_0000,
            0x1f_ffff,
            0x20_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
        ];
        match self.below(3) {
            0 => EDGES[self.below(EDGES.len() as u64) as usize],
            1 => 0x10_0000 + self.below(0x20_0000) as u32,
            _ => self.next() as u32,
        }
    }
}

/// Seeds: valid images of every kind the loaders accept.
fn seeds() -> Vec<Vec<u8>> {
    let l = 0x10_0000u32;
    let mut aout = mb_header(
        HF_AOUT_KLUDGE | 2,
        Some([l, l, l + 0x40, l + 0x1000, l + 4]),
    );
    aout.resize(0x40, 0x90);
    let mut mb64 = mb_header(3, None);
    mb64.resize(16, 0x90);
    vec![
        mb_elf_kernel(3),
        aout,
        build_elf32(
            l,
            &[
                (PT_LOAD, 0x100, l, l, 0x10, 0x100),
                (PT_LOAD, 0x110, 0x8000, 0x8000, 0x10, 0x10),
            ],
            &[0x90; 0x20],
        ),
        build_elf64(u64::from(l), u64::from(l), u64::from(l), &mb64, 0x20),
        // bzImages that fit the fuzzer's 2 MiB: relocatable (1 MiB-aligned)
        // and not, with a small decompression buffer.
        build_bzimage(&Bz {
            kernel_alignment: 0x10_0000,
            pref_address: 0x10_0000,
            init_size: 0x4_0000,
            kernel_len: 0x800,
            ..Bz::default()
        }),
        build_bzimage(&Bz {
            setup_sects: 1,
            relocatable: false,
            pref_address: 0x10_0000,
            init_size: 0x2_0000,
            initrd_addr_max: 0x1f_ffff,
            cmdline_size: 255,
            kernel_len: 0x400,
            ..Bz::default()
        }),
    ]
}

fn mutate(rng: &mut Rng, img: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            // A header-ish field gets an interesting value: the first 0x140
            // bytes (ELF, Multiboot) or the Linux setup header (0x1f0..0x270).
            0 | 1 if img.len() >= 4 => {
                let off = if img.len() >= 0x270 && rng.below(2) == 0 {
                    0x1f0 + (rng.below(0x80) as usize & !3)
                } else {
                    (rng.below(img.len().min(0x140) as u64 - 3) as usize) & !3
                };
                img[off..off + 4].copy_from_slice(&rng.value().to_le_bytes());
            }
            // A Linux setup-header byte (setup_sects, jump, loadflags...) gets a
            // random value.
            5 if img.len() >= 0x270 => {
                const BYTES: [usize; 6] = [0x1f1, 0x201, 0x206, 0x207, 0x211, 0x234];
                img[BYTES[rng.below(6) as usize]] = rng.next() as u8;
            }
            2 if !img.is_empty() => {
                let off = rng.below(img.len() as u64) as usize;
                img[off] ^= 1 << rng.below(8);
            }
            3 => img.truncate(rng.below(img.len() as u64 + 1) as usize),
            4 => img.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ if img.len() >= 2 => {
                let off = rng.below(img.len() as u64 - 1) as usize;
                img[off..off + 2].copy_from_slice(&(rng.value() as u16).to_le_bytes());
            }
            _ => {}
        }
    }
}

/// Runs every entry point on `img`; returns whether any of them succeeded and
/// records the kinds of error seen.
fn run_all(mem: &mut Memory, img: &[u8], kinds: &mut BTreeSet<String>) -> bool {
    let module = [0x5au8; 100];
    let mods = [Module {
        data: &module,
        cmdline: "mod",
    }];
    let _ = detect(img);
    let long = "x".repeat(300);
    let results = [
        load_kernel(mem, img, "cmdline", &mods),
        load_multiboot(mem, img, "", &[]),
        load_elf(mem, img),
        load_linux(mem, img, &long, Some(&[0x5a; 0x10_0000])),
    ];
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        let name = format!("{e:?}");
        let end = name.find([' ', '(', '{']).unwrap_or(name.len());
        kinds.insert(name[..end].to_string());
    }
    results.iter().any(|r| r.is_ok())
}

#[test]
fn loaders_never_panic() {
    let mut rng = Rng(0x0086_0086_0086_0086);
    let mut mem = Memory::new(2 << 20).unwrap();
    let seeds = seeds();
    let mut kinds = BTreeSet::new();
    for s in &seeds {
        assert!(run_all(&mut mem, s, &mut kinds), "seed must load");
    }
    let (mut ok, mut err) = (0, 0);
    for i in 0..12_000 {
        let img = if i % 10 == 0 {
            // Pure noise, sometimes with a valid Multiboot header with random fields.
            let len = rng.below(600) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 20 == 0 && len >= 64 {
                let flags = rng.value() | if rng.below(2) == 0 { HF_AOUT_KLUDGE } else { 0 };
                let f = [
                    rng.value(),
                    rng.value(),
                    rng.value(),
                    rng.value(),
                    rng.value(),
                ];
                let h = mb_header(flags, Some(f));
                let off = (rng.below((len - h.len()) as u64) as usize) & !3;
                v[off..off + h.len()].copy_from_slice(&h);
            }
            v
        } else {
            let mut v = seeds[i % seeds.len()].clone();
            mutate(&mut rng, &mut v);
            v
        };
        if run_all(&mut mem, &img, &mut kinds) {
            ok += 1;
        } else {
            err += 1;
        }
    }
    eprintln!("fuzz: {ok} loaded, {err} rejected, errors seen: {kinds:?}");
    // Both outcomes must occur, or the mutations are not reaching the loaders.
    assert!(ok > 500 && err > 500, "ok {ok}, err {err}");
    for k in [
        "BadElf",
        "BadMultiboot",
        "MultibootFlags",
        "OutsideRam",
        "Reserved",
        "Overflow",
        "UnknownFormat",
        "Unsupported",
        "Empty",
        "ModuleTooLarge",
        "BadBzImage",
        "OldBootProtocol",
        "RamTooSmall",
        "InitrdTooLarge",
        "CmdlineTooLong",
    ] {
        assert!(kinds.contains(k), "no {k} error reached: {kinds:?}");
    }
}
