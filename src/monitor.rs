//! The monitor: QEMU's habit of a small command line beside the console (Ctrl-A c in
//! the frontend), run while the guest is paused at a slice boundary, so that nothing
//! the guest can observe depends on it. Commands: `info registers`, `info tlb` (the
//! current page tables' mappings), `x/NF ADDR` (memory by linear address through the
//! current paging, read without setting accessed bits), `xp/NF ADDR` (physical),
//! `icount`, `savevm FILE`, `pt ADDR` (the page walk of a linear address, level by
//! level), `goto N` (with the debugger's history), `c` (continue), `quit`.

use std::fmt::Write as _;

use ox86_cpu::state::{CS, DS, ES, FS, GS, SS};
use ox86_mmu::paging::{self, Access, PagingMode};
use ox86_mmu::PhysAddr;

use crate::machine::Machine;

/// What a monitor command asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorReply {
    /// Print this (possibly empty) and read the next command.
    Text(String),
    /// Leave the monitor: the guest runs on.
    Continue,
    /// End the run.
    Quit,
}

/// The help text.
const HELP: &str = "info registers   the CPU's registers
info tlb         the current page tables' mappings
x/NF ADDR        N units at linear address ADDR (F: b, h, w or g for 1, 2, 4 or 8 bytes)
xp/NF ADDR       the same at a physical address
icount           instructions retired
pt ADDR          the page walk of linear address ADDR, level by level
goto N           go to instruction count N, back or forward (with -s or --gdb)
savevm FILE      save a snapshot of the machine (resume it with --loadvm FILE)
c                leave the monitor; the guest runs on
quit             end the run
";

impl Machine {
    /// Runs monitor command `line` (see the module's comment).
    pub fn monitor(&mut self, line: &str) -> MonitorReply {
        let words: Vec<&str> = line.split_whitespace().collect();
        let text = match words.as_slice() {
            [] => String::new(),
            ["help" | "?" | "h"] => HELP.to_string(),
            ["c" | "cont" | "continue"] => return MonitorReply::Continue,
            ["q" | "quit"] => return MonitorReply::Quit,
            ["info", "registers"] | ["info", "r"] => self.registers(),
            ["info", "tlb"] => self.mappings(),
            ["icount"] => format!("{}\n", self.cpu.state.icount),
            ["pt", addr] => match parse_number(addr) {
                Some(a) => self.page_walk(a),
                None => format!("bad address '{addr}'\n"),
            },
            ["goto", n] => match parse_number(n) {
                Some(n) => match self.goto(n) {
                    Ok(_) => format!(
                        "at instruction {} (EIP {:08x})\n",
                        self.cpu.state.icount, self.cpu.state.rip
                    ),
                    Err(e) => format!("{e}\n"),
                },
                None => format!("bad instruction count '{n}'\n"),
            },
            ["savevm", file] => match std::fs::write(file, self.snapshot()) {
                Ok(()) => format!("saved {file} at instruction {}\n", self.cpu.state.icount),
                Err(e) => format!("cannot write {file}: {e}\n"),
            },
            [cmd, addr]
                if cmd.starts_with("x/")
                    || cmd.starts_with("xp/")
                    || *cmd == "x"
                    || *cmd == "xp" =>
            {
                match self.examine(cmd, addr) {
                    Ok(t) => t,
                    Err(e) => format!("{e}\n"),
                }
            }
            _ => format!("unknown command '{}' (help lists them)\n", line.trim()),
        };
        MonitorReply::Text(text)
    }

    fn registers(&self) -> String {
        let s = &self.cpu.state;
        let mut o = String::new();
        let r = &s.regs;
        let _ = writeln!(
            o,
            "EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x}\nESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}",
            r[0], r[3], r[1], r[2], r[6], r[7], r[5], r[4]
        );
        let _ = writeln!(
            o,
            "EIP={:08x} EFL={:08x} CPL={} HLT={}",
            s.rip,
            s.eflags(),
            s.cpl,
            s.halted
        );
        for (name, k) in [
            ("ES", ES),
            ("CS", CS),
            ("SS", SS),
            ("DS", DS),
            ("FS", FS),
            ("GS", GS),
        ] {
            let g = &s.seg[k];
            let _ = writeln!(
                o,
                "{name} ={:04x} {:08x} {:08x} {:08x}",
                g.selector, g.base, g.limit, g.attr
            );
        }
        for (name, g) in [("LDT", &s.ldtr), ("TR ", &s.tr)] {
            let _ = writeln!(
                o,
                "{name}={:04x} {:08x} {:08x} {:08x}",
                g.selector, g.base, g.limit, g.attr
            );
        }
        let _ = writeln!(o, "GDT=     {:08x} {:08x}", s.gdtr.base, s.gdtr.limit);
        let _ = writeln!(o, "IDT=     {:08x} {:08x}", s.idtr.base, s.idtr.limit);
        let _ = writeln!(
            o,
            "CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x} EFER={:016x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        );
        let _ = writeln!(o, "icount={}", s.icount);
        o
    }

    /// `x/NF ADDR` or `xp/NF ADDR`.
    fn examine(&self, cmd: &str, addr: &str) -> Result<String, String> {
        let phys = cmd.starts_with("xp");
        let spec = cmd.split_once('/').map_or("", |(_, f)| f);
        let digits: String = spec.chars().take_while(|c| c.is_ascii_digit()).collect();
        let count: usize = if digits.is_empty() {
            1
        } else {
            digits
                .parse()
                .map_err(|_| format!("bad count in '{cmd}'"))?
        };
        let mut size = 4usize;
        for c in spec[digits.len()..].chars() {
            match c {
                'b' => size = 1,
                'h' => size = 2,
                'w' => size = 4,
                'g' => size = 8,
                'x' => {}
                _ => return Err(format!("unknown format '{c}' (use x with b, h, w or g)")),
            }
        }
        if count == 0 || count > 4096 {
            return Err("count must be 1 to 4096".into());
        }
        let a = addr.trim_start_matches("0x");
        let start = u64::from_str_radix(a, 16).map_err(|_| format!("bad address '{addr}'"))?;
        let regs = self.paging_regs();
        let mut o = String::new();
        let per_line = 16 / size;
        for k in 0..count {
            let at = start.wrapping_add((k * size) as u64);
            if k % per_line == 0 {
                if k > 0 {
                    o.push('\n');
                }
                let _ = write!(o, "{at:08x}:");
            }
            let mut v = 0u64;
            for i in 0..size {
                let lin = at.wrapping_add(i as u64);
                let pa = if phys {
                    lin
                } else {
                    match paging::peek(&self.mem, &regs, lin, Access::Read, false) {
                        Ok(t) => t.frame.0 | (lin & 0xfff),
                        Err(_) => {
                            o.push_str(" (not mapped)\n");
                            return Ok(o);
                        }
                    }
                };
                let mut b = [0u8];
                self.mem.read_phys(PhysAddr(pa), &mut b);
                v |= u64::from(b[0]) << (8 * i);
            }
            let _ = write!(o, " {v:0w$x}", w = size * 2);
        }
        o.push('\n');
        Ok(o)
    }

    /// The page walk of linear address `lin` through the current page tables: each
    /// level's entry (its physical address, value and bits), then the translation.
    fn page_walk(&self, lin: u64) -> String {
        let regs = self.paging_regs();
        let mode = regs.mode();
        let lin = lin & 0xffff_ffff;
        let mut o = format!("linear {lin:08x}, CR3 {:08x}, ", regs.cr3);
        let a20 = self.mem.a20_mask();
        let bits = |e: u64| {
            let mut f = String::new();
            for (bit, name) in [
                (0, "P"),
                (1, "RW"),
                (2, "US"),
                (3, "PWT"),
                (4, "PCD"),
                (5, "A"),
                (6, "D"),
                (7, "PS"),
                (8, "G"),
                (63, "XD"),
            ] {
                if e >> bit & 1 != 0 {
                    f.push(' ');
                    f.push_str(name);
                }
            }
            f
        };
        // (level name, entry address, 64-bit entries, index shift) from the top.
        let levels: Vec<(&str, u64, bool, u32)> = match mode {
            PagingMode::None => {
                o.push_str("paging off: physical = linear\n");
                return o;
            }
            PagingMode::Legacy => {
                o.push_str("32-bit paging\n");
                vec![
                    ("PDE", regs.cr3 & 0xffff_f000, false, 22),
                    ("PTE", 0, false, 12),
                ]
            }
            PagingMode::Pae => {
                o.push_str("PAE paging\n");
                vec![
                    ("PDPTE", regs.cr3 & 0xffff_ffe0, true, 30),
                    ("PDE", 0, true, 21),
                    ("PTE", 0, true, 12),
                ]
            }
            PagingMode::Level4 => {
                o.push_str("4-level paging\n");
                vec![
                    ("PML4E", regs.cr3 & 0x000f_ffff_ffff_f000, true, 39),
                    ("PDPTE", 0, true, 30),
                    ("PDE", 0, true, 21),
                    ("PTE", 0, true, 12),
                ]
            }
        };
        let mut table = levels[0].1;
        for (i, &(name, _, wide, shift)) in levels.iter().enumerate() {
            let index_bits = if wide {
                if mode == PagingMode::Pae && i == 0 {
                    2
                } else {
                    9
                }
            } else {
                10
            };
            let idx = (lin >> shift) & ((1 << index_bits) - 1);
            let at = (table + idx * if wide { 8 } else { 4 }) & a20;
            let e = if wide {
                self.mem.read_u64(PhysAddr(at))
            } else {
                u64::from(self.mem.read_u32(PhysAddr(at)))
            };
            let _ = writeln!(
                o,
                "  {name:<5} [{idx:3}] at {at:09x} = {e:0w$x}{}",
                bits(e),
                w = if wide { 16 } else { 8 }
            );
            let large = e & 0x80 != 0
                && name != "PTE"
                && name != "PML4E"
                && !(mode == PagingMode::Pae && name == "PDPTE")
                && (wide || regs.cr4 & paging::CR4_PSE != 0);
            if e & 1 == 0 || large {
                break;
            }
            table = e & if wide {
                0x000f_ffff_ffff_f000
            } else {
                0xffff_f000
            };
        }
        match paging::peek(&self.mem, &regs, lin, Access::Read, false) {
            Ok(t) => {
                let w = paging::peek(&self.mem, &regs, lin, Access::Write, false).is_ok();
                let u = paging::peek(&self.mem, &regs, lin, Access::Read, true).is_ok();
                let _ = writeln!(
                    o,
                    "  -> physical {:09x} ({} KiB page, {}, {}{})",
                    t.frame.0 | (lin & 0xfff),
                    t.page_size.max(4096) / 1024,
                    if w { "writable" } else { "read-only" },
                    if u { "user" } else { "kernel only" },
                    if t.global { ", global" } else { "" }
                );
            }
            Err(pf) => {
                let _ = writeln!(o, "  -> page fault, error code {:#x}", pf.error_code);
            }
        }
        o
    }

    /// The mappings of the current page tables, contiguous runs merged.
    fn mappings(&self) -> String {
        let regs = self.paging_regs();
        let mode = regs.mode();
        if mode == PagingMode::None {
            return "paging is off: linear addresses are physical\n".into();
        }
        if mode == PagingMode::Level4 {
            return "4-level paging: not listed\n".into();
        }
        let mut o = String::new();
        // (linear start, physical start, length, flags) of the current run.
        type Run = Option<(u64, u64, u64, String)>;
        let mut run: Run = None;
        let flush = |run: &mut Run, o: &mut String| {
            if let Some((l, p, n, f)) = run.take() {
                let _ = writeln!(o, "{l:08x}-{:08x} -> {p:09x} {f}", l + n - 1);
            }
        };
        let mut lin = 0u64;
        while lin < 1 << 32 {
            match paging::peek(&self.mem, &regs, lin, Access::Read, false) {
                Ok(t) => {
                    let w = paging::peek(&self.mem, &regs, lin, Access::Write, false).is_ok();
                    let u = paging::peek(&self.mem, &regs, lin, Access::Read, true).is_ok();
                    let f = format!(
                        "{} {}{}",
                        if w { "rw" } else { "ro" },
                        if u { "user" } else { "kernel" },
                        if t.global { " global" } else { "" }
                    );
                    let size = t.page_size.max(4096);
                    let base = lin & !(size - 1);
                    let pa = t.frame.0 & !(size - 1);
                    let go_on = run
                        .as_ref()
                        .is_some_and(|(l, p, n, g)| l + n == base && p + n == pa && *g == f);
                    if go_on {
                        if let Some(r) = run.as_mut() {
                            r.2 += size;
                        }
                    } else {
                        flush(&mut run, &mut o);
                        run = Some((base, pa, size, f));
                    }
                    lin = base + size;
                }
                Err(_) => {
                    flush(&mut run, &mut o);
                    lin += 4096;
                }
            }
        }
        flush(&mut run, &mut o);
        if o.is_empty() {
            o.push_str("no page is mapped\n");
        }
        o
    }
}

/// A number as typed to the monitor: hexadecimal with 0x, else decimal.
pub fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}
