//! Symbols for trace analysis (`--symbols FILE...`): ELF files (their symbol tables,
//! and their DWARF line tables through addr2line) and Linux `System.map` files.
//!
//! An ELF file names a block's code only where the file holds the block's own bytes at
//! its address (checked once per block), so a program's symbols are not given to
//! another program mapped at the same addresses. A `System.map` has no bytes: it names
//! code at CPL 0 between its lowest and highest symbol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ox86::trace::BlockDef;

/// A function (or other code symbol): [start, end) and its name.
#[derive(Debug, Clone)]
struct Sym {
    start: u64,
    end: u64,
    name: String,
}

/// One symbol file.
struct SymFile {
    path: PathBuf,
    syms: Vec<Sym>,
    /// Loadable segments (address, bytes), for ELF files.
    segments: Option<Vec<(u64, Vec<u8>)>>,
    /// DWARF lines, for ELF files that have them.
    lines: Option<addr2line::Loader>,
    /// Address range the file names.
    lo: u64,
    hi: u64,
}

/// Where an address is: a symbol of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymRef {
    file: u32,
    sym: u32,
}

/// The symbol files given.
#[derive(Default)]
pub struct Symbols {
    files: Vec<SymFile>,
    /// The file that names each block (by block id), once checked.
    by_block: HashMap<u32, Option<u32>>,
}

impl Symbols {
    /// Loads `paths` (ELF files and System.map files, told apart by their contents).
    pub fn load(paths: &[PathBuf]) -> Result<Symbols> {
        let mut s = Symbols::default();
        for p in paths {
            let bytes =
                std::fs::read(p).with_context(|| format!("cannot read symbols {}", p.display()))?;
            let f = if bytes.starts_with(b"\x7fELF") {
                elf(p, &bytes)?
            } else {
                system_map(p, &bytes)?
            };
            s.files.push(f);
        }
        Ok(s)
    }

    /// The file that names block `id` (defined by `def`, run at privilege `cpl`).
    fn file_of(&mut self, id: u32, def: &BlockDef, cpl: u8) -> Option<u32> {
        if let Some(&f) = self.by_block.get(&id) {
            return f;
        }
        let lin = def.lin();
        let found = self.files.iter().position(|f| {
            if lin < f.lo || lin >= f.hi {
                return false;
            }
            match &f.segments {
                Some(segs) => segs.iter().any(|(addr, data)| {
                    lin >= *addr
                        && lin - addr + def.bytes.len() as u64 <= data.len() as u64
                        && data[(lin - addr) as usize..][..def.bytes.len()] == def.bytes[..]
                }),
                None => cpl == 0,
            }
        });
        let found = found.map(|f| f as u32);
        self.by_block.insert(id, found);
        found
    }

    /// The symbol at linear address `lin`, in block `id` (defined by `def`, run at
    /// privilege `cpl`).
    pub fn lookup(&mut self, id: u32, def: &BlockDef, cpl: u8, lin: u64) -> Option<SymRef> {
        let file = self.file_of(id, def, cpl)?;
        let f = &self.files[file as usize];
        let k = f.syms.partition_point(|s| s.start <= lin);
        let s = k.checked_sub(1)?;
        (lin < f.syms[s].end).then_some(SymRef {
            file,
            sym: s as u32,
        })
    }

    /// The name of `r`.
    pub fn name(&self, r: SymRef) -> &str {
        &self.files[r.file as usize].syms[r.sym as usize].name
    }

    /// The start address of `r`.
    pub fn start(&self, r: SymRef) -> u64 {
        self.files[r.file as usize].syms[r.sym as usize].start
    }

    /// The file `r` is from (its name).
    pub fn file_name(&self, r: SymRef) -> String {
        let p = &self.files[r.file as usize].path;
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The source line of address `lin` in the file of `r`, if its DWARF says.
    pub fn line(&self, r: SymRef, lin: u64) -> Option<String> {
        let l = self.files[r.file as usize].lines.as_ref()?;
        let loc = l.find_location(lin).ok()??;
        let file = loc.file?;
        let short = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.to_string());
        Some(match loc.line {
            Some(n) => format!("{short}:{n}"),
            None => short,
        })
    }
}

/// The code symbols of an ELF file, its loadable segments and its lines.
fn elf(path: &Path, bytes: &[u8]) -> Result<SymFile> {
    let e = goblin::elf::Elf::parse(bytes)
        .map_err(|e| anyhow::anyhow!("symbols {}: not a valid ELF file: {e}", path.display()))?;
    let mut syms: Vec<Sym> = e
        .syms
        .iter()
        .filter(|s| {
            s.is_function() || (s.st_type() == goblin::elf::sym::STT_NOTYPE && s.st_shndx != 0)
        })
        .filter(|s| s.st_value != 0)
        .filter_map(|s| {
            let name = e.strtab.get_at(s.st_name)?;
            (!name.is_empty()).then(|| Sym {
                start: s.st_value,
                end: s.st_value + s.st_size,
                name: name.to_string(),
            })
        })
        .collect();
    finish_syms(&mut syms);
    let segments: Vec<(u64, Vec<u8>)> = e
        .program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD && p.is_executable())
        .filter_map(|p| {
            let r = p.file_range();
            bytes.get(r).map(|b| (p.p_vaddr, b.to_vec()))
        })
        .collect();
    if segments.is_empty() {
        bail!("symbols {}: the ELF file has no code", path.display());
    }
    let lo = segments.iter().map(|s| s.0).min().unwrap_or(0);
    let hi = segments
        .iter()
        .map(|s| s.0 + s.1.len() as u64)
        .max()
        .unwrap_or(0);
    let lines = addr2line::Loader::new(path).ok();
    Ok(SymFile {
        path: path.to_path_buf(),
        syms,
        segments: Some(segments),
        lines,
        lo,
        hi,
    })
}

/// The text symbols of a System.map file ("address type name" lines).
fn system_map(path: &Path, bytes: &[u8]) -> Result<SymFile> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "symbols {}: neither an ELF file nor a System.map",
            path.display()
        )
    })?;
    let mut syms = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut w = line.split_whitespace();
        let (Some(a), Some(t), Some(name)) = (w.next(), w.next(), w.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            bail!(
                "symbols {}: line {} is not 'address type name'",
                path.display(),
                n + 1
            );
        };
        let addr = u64::from_str_radix(a, 16).map_err(|_| {
            anyhow::anyhow!(
                "symbols {}: line {}: bad address '{a}'",
                path.display(),
                n + 1
            )
        })?;
        if matches!(t, "T" | "t" | "W" | "w") {
            syms.push(Sym {
                start: addr,
                end: 0,
                name: name.to_string(),
            });
        }
    }
    if syms.is_empty() {
        bail!("symbols {}: no text symbols", path.display());
    }
    finish_syms(&mut syms);
    let lo = syms.first().map_or(0, |s| s.start);
    let hi = syms.last().map_or(0, |s| s.end);
    Ok(SymFile {
        path: path.to_path_buf(),
        syms,
        segments: None,
        lines: None,
        lo,
        hi,
    })
}

/// Sorts symbols, drops duplicates, and gives those without a size one up to the
/// next symbol.
fn finish_syms(syms: &mut Vec<Sym>) {
    syms.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    syms.dedup_by_key(|s| s.start);
    for i in 0..syms.len() {
        if syms[i].end <= syms[i].start {
            syms[i].end = syms.get(i + 1).map_or(syms[i].start + 0x1000, |n| n.start);
        }
    }
}
