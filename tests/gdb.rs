//! The GDB stub, driven by Debian's `gdb` in batch mode (scripts/test installs it) and
//! by a raw remote-protocol client: a bare-metal C program built with -g (break on a
//! function, step, print variables, watch a global, continue to its write, reverse
//! continue to the writes before, reverse-stepi back to a breakpoint), Debian's
//! kernel with the symbols of scripts/fetch-guests' System.map (break on
//! start_kernel, read linux_banner, single-step through a page fault), Ctrl-C in a
//! compiled loop, and clients that send garbage or go away mid-packet.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{engine_name, engines, guests_dir, linux_dir, ox86_command, root, text};

/// An `ox86 run` listening for GDB on a free port.
struct Stub {
    child: Child,
    /// Where it listens.
    addr: String,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Stub {
    /// Starts ox86 with `args` and `--gdb tcp::0`; waits until it listens.
    fn start(args: &[&str]) -> Stub {
        let mut child = ox86_command()
            .arg("run")
            .args(args)
            .args(["--gdb", "tcp::0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ox86");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut so = child.stdout.take().expect("stdout");
        let o = out.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = so.read(&mut b) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let se = BufReader::new(child.stderr.take().expect("stderr"));
        let e = err.clone();
        std::thread::spawn(move || {
            for line in se.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ox86: GDB can connect to ") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut e = e.lock().unwrap();
                e.extend_from_slice(line.as_bytes());
                e.push(b'\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30) * common::time_scale())
            .unwrap_or_else(|_| panic!("ox86 does not listen: {}", text(&err.lock().unwrap())));
        Stub {
            child,
            addr,
            out,
            err,
        }
    }

    /// Waits for ox86 to end: (exit code, stdout, stderr).
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > timeout * common::time_scale() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ox86 did not end\nstdout:\n{}\nstderr:\n{}",
                    text(&self.out.lock().unwrap()),
                    text(&self.err.lock().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader threads see the pipes close.
        std::thread::sleep(Duration::from_millis(100));
        let out = text(&self.out.lock().unwrap());
        let err = text(&self.err.lock().unwrap());
        (status.code(), out, err)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gdb -batch` with `script` (`ADDR` replaced by the stub's address) on `file`.
fn gdb(stub: &Stub, script: &str, file: Option<&Path>) -> String {
    assert!(
        Command::new("gdb").arg("--version").output().is_ok(),
        "gdb is not installed (scripts/test installs it: apt-get install gdb)"
    );
    let dir = root().join("target").join("gdb-tests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join(format!("script-{}.gdb", stub.child.id()));
    std::fs::write(&path, script.replace("ADDR", &stub.addr)).expect("write script");
    let mut cmd = Command::new("gdb");
    cmd.args(["-q", "-nx", "-batch", "-x"]).arg(&path);
    if let Some(f) = file {
        cmd.arg(f);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gdb");
    let out = child.wait_with_output().expect("gdb output");
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// The text after the first occurrence of `marker` in `s`, which must be there.
fn after<'a>(s: &'a str, marker: &str) -> &'a str {
    let i = s
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{s}"));
    &s[i + marker.len()..]
}

#[test]
fn gdb_debugs_a_c_program_forwards_and_backwards() {
    let elf = guests_dir().join("gdbdemo.elf");
    let serial = root().join("target").join("gdb-tests");
    std::fs::create_dir_all(&serial).expect("mkdir");
    for engine in engines() {
        let name = engine_name(engine);
        let serial_file = serial.join(format!("gdbdemo-{name}.serial"));
        let serial_arg = format!("file:{}", serial_file.display());
        let mut args = vec![
            "--kernel",
            elf.to_str().expect("path"),
            "-S",
            "--serial",
            &serial_arg,
        ];
        args.extend_from_slice(engine);
        let stub = Stub::start(&args);
        let script = "set pagination off
set confirm off
target remote ADDR
break square
continue
next
print x
print y
info registers eip cs_base cs_limit cr0 icount
monitor icount
delete
watch counter
continue
continue
reverse-continue
print counter
reverse-continue
print counter
print by
break bump
reverse-stepi 3
print counter
reverse-finish
reverse-next
reverse-step
print i
delete
continue
";
        let out = gdb(&stub, script, Some(&elf));
        let ctx = format!("({name})\n{out}");
        let s = after(&out, "Breakpoint 1, square (x=1)");
        let s = after(s, "$1 = 1\n");
        let s = after(s, "$2 = 1\n");
        assert!(s.contains("cs_base        0x0"), "{ctx}");
        assert!(s.contains("cs_limit       0xffffffff"), "{ctx}");
        // Forward to the first write, then the second.
        let s = after(s, "Old value = 0\nNew value = 1\nbump (by=1)");
        let s = after(s, "Old value = 1\nNew value = 3\nbump (by=2)");
        // Back over the second write, then to the write before it.
        let s = after(s, "Old value = 3\nNew value = 1\n");
        let s = after(s, "$3 = 1\n");
        let s = after(s, "Old value = 1\nNew value = 0\n");
        let s = after(s, "$4 = 0\n");
        let s = after(s, "$5 = 1\n");
        // Three instructions back from the store is the breakpoint after the prologue.
        let s = after(s, "Breakpoint 3, bump (by=1)");
        let s = after(s, "$6 = 0\n");
        // Out of bump backwards to its call, then back over the line before it.
        let s = after(s, "in cprog_run () at ");
        let s = after(s, "bump(i);");
        let s = after(s, "bump(i);");
        let s = after(s, "total += s;");
        let s = after(s, "$7 = 1\n");
        assert!(s.contains("exited with code"), "{ctx}");
        let (code, _, err) = stub.finish(Duration::from_secs(60));
        assert_eq!(code, Some(33), "{ctx}\n{err}");
        let serial = std::fs::read_to_string(&serial_file).expect("serial");
        assert!(
            serial.contains("gdbdemo total 55 counter 15") && serial.contains("PASS"),
            "{name}: {serial}"
        );
    }
}

/// The kernel's symbols (scripts/fetch-guests writes System.map).
fn linux_symbols(dir: &Path) -> std::collections::HashMap<String, u64> {
    let map = std::fs::read_to_string(dir.join("System.map")).expect("System.map");
    map.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let a = u64::from_str_radix(w.next()?, 16).ok()?;
            let _ = w.next()?;
            Some((w.next()?.to_string(), a))
        })
        .collect()
}

#[test]
#[ignore = "needs the fetched kernel: scripts/test runs it (--include-ignored)"]
fn gdb_debugs_the_linux_kernel_with_its_system_map() {
    let dir = linux_dir();
    let syms = linux_symbols(dir);
    let start_kernel = syms["start_kernel"];
    let banner = syms["linux_banner"];
    let pf = syms["asm_exc_page_fault"];
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initramfs.cpio.gz");
    let serial = root().join("target").join("gdb-tests").join("linux.serial");
    std::fs::create_dir_all(serial.parent().expect("dir")).expect("mkdir");
    let serial_arg = format!("file:{}", serial.display());
    let stub = Stub::start(&[
        "--kernel",
        kernel.to_str().expect("path"),
        "--initrd",
        initrd.to_str().expect("path"),
        "--append",
        "console=ttyS0 nokaslr ox86test=smoke",
        "-m",
        "256M",
        "--no-reboot",
        "-S",
        "--serial",
        &serial_arg,
    ]);
    let script = format!(
        "set pagination off
set confirm off
target remote ADDR
break *{start_kernel:#x}
continue
info registers eip
x/s {banner:#x}
delete
break *{pf:#x}
continue
info registers eip cr2
reverse-stepi
info registers eip
stepi
info registers eip
stepi
info registers eip cr2
monitor pt {start_kernel:#x}
detach
"
    );
    let out = gdb(&stub, &script, None);
    let s = after(&out, &format!("Breakpoint 1, {start_kernel:#x} in ?? ()"));
    let s = after(s, &format!("eip            {start_kernel:#x}"));
    let s = after(s, &format!("{banner:#x}:\t\""));
    let read_banner = s.split("\\n\"").next().expect("banner").to_string();
    let s = after(s, &format!("Breakpoint 2, {pf:#x} in ?? ()"));
    let s = after(s, &format!("eip            {pf:#x}"));
    let cr2 = after(s, "cr2            ")
        .split_whitespace()
        .next()
        .expect("cr2")
        .to_string();
    // One instruction back, then forward: the instruction before the fault, then the
    // fault itself, delivered to the handler with the same CR2.
    let s = after(s, "eip            ");
    let before = s.split_whitespace().next().expect("eip").to_string();
    assert_ne!(before, format!("{pf:#x}"), "{out}");
    let s = after(s, "eip            ");
    let faulting = s.split_whitespace().next().expect("eip").to_string();
    assert_ne!(faulting, before, "{out}");
    let s = after(s, &format!("eip            {pf:#x}"));
    let s = after(s, &format!("cr2            {cr2}"));
    assert!(
        s.contains("4096 KiB page") || s.contains("4 KiB page"),
        "{out}"
    );
    let (code, _, err) = stub.finish(Duration::from_secs(600));
    let serial = std::fs::read_to_string(&serial).expect("serial");
    assert_eq!(code, Some(0), "{err}\n{serial}");
    assert!(serial.contains("OX86-TEST-PASS"), "{serial}");
    // What GDB read at linux_banner is the banner the kernel printed.
    let printed = serial
        .lines()
        .find(|l| l.contains("Linux version "))
        .expect("the banner in the boot log");
    assert!(
        printed.ends_with(read_banner.as_str()) && read_banner.starts_with("Linux version 6."),
        "read {read_banner:?}, printed {printed:?}"
    );
}

/// A raw remote-protocol packet.
fn packet(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

/// Reads until a whole packet (after `$`, up to `#xx`) came; returns its body.
fn read_packet(s: &mut TcpStream, timeout: Duration) -> String {
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b).expect("read a packet");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(b[0]);
        if let Some(start) = buf.iter().position(|&c| c == b'$') {
            if buf.len() >= start + 3 && buf[buf.len() - 3] == b'#' {
                let body = String::from_utf8_lossy(&buf[start + 1..buf.len() - 3]).to_string();
                s.write_all(b"+").expect("ack");
                return body;
            }
        }
    }
}

/// A reply with its run-length encoding (`c*n`: n - 29 more of c) expanded.
fn unrle(body: &str) -> String {
    let b = body.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'*' && i + 1 < b.len() {
            let last = out.chars().last().expect("a character to repeat");
            for _ in 0..(b[i + 1] as usize - 29) {
                out.push(last);
            }
            i += 2;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn exchange(s: &mut TcpStream, body: &str) -> String {
    s.write_all(&packet(body)).expect("send");
    read_packet(s, Duration::from_secs(30))
}

/// The bare-metal benchmark (1.4 s), waiting for GDB.
fn bench_stub() -> Stub {
    let elf = guests_dir().join("bench.elf");
    Stub::start(&[
        "--kernel",
        elf.to_str().expect("path"),
        "-S",
        "--serial",
        "none",
    ])
}

#[test]
fn ctrl_c_stops_the_guest_in_compiled_code_at_once() {
    let stub = bench_stub();
    let mut s = TcpStream::connect(&stub.addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    exchange(&mut s, "qSupported:swbreak+;hwbreak+");
    let first = exchange(&mut s, "?");
    assert!(first.starts_with('T') || first.starts_with('S'), "{first}");
    // The core and system registers: 352 bytes.
    assert_eq!(unrle(&exchange(&mut s, "g")).len(), 704);
    let mut latencies = Vec::new();
    for round in 0..3 {
        s.write_all(&packet("c")).expect("continue");
        // Long enough for the JIT to compile the benchmark's loops.
        std::thread::sleep(Duration::from_millis(if round == 0 { 400 } else { 100 }));
        let t = Instant::now();
        s.write_all(&[3]).expect("Ctrl-C");
        let stop = read_packet(&mut s, Duration::from_secs(10));
        latencies.push(t.elapsed());
        assert!(
            stop.starts_with("T02") || stop.starts_with("S02"),
            "SIGINT: {stop}"
        );
        assert_eq!(
            unrle(&exchange(&mut s, "g")).len(),
            704,
            "the same registers"
        );
    }
    eprintln!("Ctrl-C to stop reply: {latencies:?}");
    // Measured, not timed: it stops well within a second, even on a loaded host.
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(2)),
        "{latencies:?}"
    );
    assert_eq!(exchange(&mut s, "D"), "OK");
    let (code, _, err) = stub.finish(Duration::from_secs(120));
    assert_eq!(code, Some(33), "the benchmark passes after it all: {err}");
}

#[test]
fn garbage_and_broken_connections_do_not_take_ox86_down() {
    let stub = bench_stub();
    // Garbage, bad checksums, unknown and malformed packets, then gone mid-packet.
    {
        let mut s = TcpStream::connect(&stub.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        junk.extend_from_slice(b"$m0,zz#00$Z9,1,1#ff$qXfer:features:read:nope.xml:0,ffff#00");
        junk.extend_from_slice(&packet("m100000,ffffffff"));
        junk.extend_from_slice(&packet("Gzz"));
        junk.extend_from_slice(&packet("vCont;q"));
        junk.extend_from_slice(&packet("X100000,4:ab"));
        junk.extend_from_slice(b"$m100000,");
        let _ = s.write_all(&junk);
        let mut sink = [0u8; 65536];
        let _ = s.read(&mut sink);
    }
    // Gone right after connecting.
    drop(TcpStream::connect(&stub.addr).expect("connect"));
    // ox86 is alive: a proper session works, and the guest runs to its end.
    std::thread::sleep(Duration::from_millis(200));
    let mut s = TcpStream::connect(&stub.addr).expect("connect again");
    let stop = exchange(&mut s, "?");
    assert!(!stop.is_empty(), "a stop reply: {stop}");
    assert!(exchange(&mut s, "m100000,4").len() == 8);
    assert_eq!(exchange(&mut s, "D"), "OK");
    let (code, _, err) = stub.finish(Duration::from_secs(120));
    assert_eq!(code, Some(33), "{err}");
}
