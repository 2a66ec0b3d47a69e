//! Running 32-bit snippets natively on the host CPU, in 32-bit compatibility mode.
//!
//! The snippet's code, data and stack live at the guest addresses ox86's testkit uses
//! (mapped at the same host virtual addresses), so absolute memory operands and
//! register-based addresses behave identically. A control page at [`CTL`] holds the
//! register block and two hand-encoded stubs:
//!
//! * a 64-bit entry (called as `extern "C" fn()`): saves callee-saved registers, RSP,
//!   DS/ES and the FCW, switches RSP to a stack in the control page, and far-calls
//!   (`call far m16:32`) the 32-bit stub with selector 0x23 (`__USER32_CS`);
//! * the 32-bit stub: loads DS/ES with 0x2b, EFLAGS and EAX..EDI from the block, and
//!   jumps to the snippet at 0x200000, which ends with a `jmp` to the 32-bit exit:
//!   it stores EAX..EDI and EFLAGS back and far-returns (`retf`) to the 64-bit
//!   landing pad (its return address holds selector 0x33), which restores everything
//!   (CLD, FNINIT + the saved FCW) and returns.
//!
//! A fault in a snippet (SIGSEGV/SIGILL/SIGFPE/SIGBUS/SIGTRAP) is caught by a signal
//! handler that redirects the context to a 64-bit recovery pad, so the run reports
//! the signal instead of killing the test process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use ox86_cpu::testkit::{Regs32, CODE_ADDR, DATA_ADDR, STACK_TOP};

/// Control page (register block, stubs, private stack).
pub const CTL: u32 = 0x0009_0000;
const CTL_SIZE: usize = 0x2000;
const R_REGS: u32 = 0x00; // 8 dwords EAX..EDI, then EFLAGS at 0x20
const R_EFLAGS: u32 = 0x20;
const R_HOSTRSP: u32 = 0x40; // u64
const R_STUBESP: u32 = 0x48; // u32
const R_FARIN: u32 = 0x50; // m16:32
const R_DS: u32 = 0x58;
const R_ES: u32 = 0x5a;
const R_FCW: u32 = 0x5c;
const R_SIGNAL: u32 = 0x60; // u32: signal number of a fault, 0 if none
const R_FAULTIP: u32 = 0x64; // u32: EIP of the fault
const ENTRY64: u32 = 0x100;
const LAND64: u32 = 0x180;
const RECOVER64: u32 = 0x1c0;
const STUB32: u32 = 0x200;
const EXIT32: u32 = 0x300;
const PRIV_STACK_TOP: u32 = 0x1ff0;

/// Size of the native data mapping at DATA_ADDR.
pub const DATA_MAP: usize = 0x10000;
/// Size of the native code mapping at CODE_ADDR.
pub const CODE_MAP: usize = 0x10000;
/// Native stack mapping: [STACK_TOP - STACK_MAP, STACK_TOP).
pub const STACK_MAP: usize = 0x10000;

/// The outcome of a native run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeEnd {
    /// Ran to the end.
    Done,
    /// Raised this signal at this EIP.
    Signal(i32, u32),
}

/// The native executor (one per process; access is serialised by a mutex).
pub struct Native {
    _private: (),
}

static NATIVE: OnceLock<Mutex<Native>> = OnceLock::new();
static IN_NATIVE: AtomicBool = AtomicBool::new(false);

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

struct Emit(Vec<u8>);
impl Emit {
    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// opcode bytes followed by a disp32 absolute address (in 64-bit code, ModRM must
    /// select SIB-with-no-base, so callers include the 0x25 SIB byte themselves).
    fn a(&mut self, bytes: &[u8], addr: u32) -> &mut Self {
        self.b(bytes);
        self.b(&le32(addr))
    }
}

unsafe fn map_fixed(addr: usize, len: usize) {
    // SAFETY: MAP_FIXED_NOREPLACE never clobbers an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert!(
        p as usize == addr,
        "mmap at {addr:#x} failed: {}",
        std::io::Error::last_os_error()
    );
}

extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if !IN_NATIVE.load(Ordering::SeqCst) {
        // Not ours: restore the default action and return to re-raise it.
        // SAFETY: plain libc calls.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
        return;
    }
    // SAFETY: the kernel passes a valid ucontext; CTL is mapped.
    unsafe {
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        let g = &mut uc.uc_mcontext.gregs;
        let ip = g[libc::REG_RIP as usize] as u32;
        std::ptr::write_volatile((CTL + R_SIGNAL) as *mut u32, sig as u32);
        std::ptr::write_volatile((CTL + R_FAULTIP) as *mut u32, ip);
        g[libc::REG_RIP as usize] = (CTL + RECOVER64) as i64;
        g[libc::REG_RSP as usize] = (CTL + PRIV_STACK_TOP) as i64;
        // CS lives in the low 16 bits of REG_CSGSFS.
        let csgsfs = g[libc::REG_CSGSFS as usize] as u64;
        g[libc::REG_CSGSFS as usize] = ((csgsfs & !0xffff) | 0x33) as i64;
        g[libc::REG_EFL as usize] &= !0x100; // TF
    }
}

thread_local! {
    static ALTSTACK: () = {
        // A signal stack for this thread (the fault may happen with ESP anywhere).
        let size = 0x10000usize;
        let mem = Box::leak(vec![0u8; size].into_boxed_slice());
        let st = libc::stack_t { ss_sp: mem.as_mut_ptr() as *mut libc::c_void, ss_flags: 0, ss_size: size };
        // SAFETY: the stack memory is leaked, so it lives forever.
        unsafe { libc::sigaltstack(&st, std::ptr::null_mut()); }
    };
}

impl Native {
    /// The process-wide native executor, locked.
    pub fn get() -> MutexGuard<'static, Native> {
        let m = NATIVE.get_or_init(|| {
            // SAFETY: fresh fixed mappings at addresses nothing else uses; the stubs
            // are written before anything runs them.
            unsafe { Mutex::new(Native::init()) }
        });
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    unsafe fn init() -> Native {
        unsafe {
            map_fixed(CTL as usize, CTL_SIZE);
            map_fixed(DATA_ADDR as usize, DATA_MAP);
            map_fixed(CODE_ADDR as usize, CODE_MAP);
            map_fixed(STACK_TOP as usize - STACK_MAP, STACK_MAP);
        }
        let c = |o: u32| CTL + o;
        // 64-bit entry.
        let mut e = Emit(Vec::new());
        e.b(&[0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57]); // push rbx rbp r12-r15
        e.a(&[0x48, 0x89, 0x24, 0x25], c(R_HOSTRSP)); // mov [HOSTRSP], rsp
        e.a(&[0x8c, 0x1c, 0x25], c(R_DS)); // mov [DS], ds
        e.a(&[0x8c, 0x04, 0x25], c(R_ES)); // mov [ES], es
        e.a(&[0xd9, 0x3c, 0x25], c(R_FCW)); // fnstcw [FCW]
        e.a(&[0xbc], c(PRIV_STACK_TOP)); // mov esp, PRIV_STACK_TOP
        e.a(&[0xff, 0x1c, 0x25], c(R_FARIN)); // call far dword [FARIN]
        let entry = e.0;
        assert!(entry.len() <= (LAND64 - ENTRY64) as usize);
        // The far call's return address must be LAND64: pad with a jmp.
        let mut entry = entry;
        let after_call = ENTRY64 + entry.len() as u32;
        entry.push(0xe9);
        entry.extend_from_slice(&le32(LAND64.wrapping_sub(after_call + 5)));
        // 64-bit landing pad (also reached by the jmp right after the call).
        let mut l = Emit(Vec::new());
        l.a(&[0x48, 0x8b, 0x24, 0x25], c(R_HOSTRSP)); // mov rsp, [HOSTRSP]
        l.a(&[0x8e, 0x1c, 0x25], c(R_DS)); // mov ds, [DS]
        l.a(&[0x8e, 0x04, 0x25], c(R_ES)); // mov es, [ES]
        l.b(&[0xdb, 0xe3]); // fninit
        l.a(&[0xd9, 0x2c, 0x25], c(R_FCW)); // fldcw [FCW]
        l.b(&[0xfc]); // cld
        l.b(&[
            0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b, 0xc3,
        ]);
        assert!(l.0.len() <= (RECOVER64 - LAND64) as usize);
        // Recovery pad (64-bit, entered from the signal handler): same as landing.
        let recover = l.0.clone();
        // 32-bit stub.
        let mut s = Emit(Vec::new());
        s.b(&[0x66, 0xb8, 0x2b, 0x00, 0x8e, 0xd8, 0x8e, 0xc0]); // mov ax,0x2b; mov ds,ax; mov es,ax
        s.a(&[0x89, 0x25], c(R_STUBESP)); // mov [STUBESP], esp
        s.a(&[0xff, 0x35], c(R_EFLAGS)); // push dword [EFLAGS]
        s.b(&[0x9d]); // popfd
        s.a(&[0xa1], c(R_REGS)); // mov eax, [..]
        for (r, modrm) in [
            (1u32, 0x0du8),
            (2, 0x15),
            (3, 0x1d),
            (5, 0x2d),
            (6, 0x35),
            (7, 0x3d),
            (4, 0x25),
        ] {
            s.a(&[0x8b, modrm], c(R_REGS + 4 * r));
        }
        let jmp_at = STUB32 + s.0.len() as u32;
        s.a(&[0xe9], CODE_ADDR.wrapping_sub(c(jmp_at) + 5));
        assert!(s.0.len() <= (EXIT32 - STUB32) as usize);
        // 32-bit exit.
        let mut x = Emit(Vec::new());
        x.a(&[0xa3], c(R_REGS)); // mov [..], eax
        for (r, modrm) in [
            (1u32, 0x0du8),
            (2, 0x15),
            (3, 0x1d),
            (4, 0x25),
            (5, 0x2d),
            (6, 0x35),
            (7, 0x3d),
        ] {
            x.a(&[0x89, modrm], c(R_REGS + 4 * r));
        }
        x.a(&[0x8b, 0x25], c(R_STUBESP)); // mov esp, [STUBESP]
        x.b(&[0x9c]); // pushfd
        x.a(&[0x8f, 0x05], c(R_EFLAGS)); // pop dword [EFLAGS]
        x.b(&[0xfc, 0xcb]); // cld; retf
                            // SAFETY: CTL is mapped RWX and CTL_SIZE covers all offsets.
        unsafe {
            let base = CTL as *mut u8;
            std::ptr::write_bytes(base, 0xcc, CTL_SIZE);
            std::ptr::copy_nonoverlapping(entry.as_ptr(), base.add(ENTRY64 as usize), entry.len());
            std::ptr::copy_nonoverlapping(l.0.as_ptr(), base.add(LAND64 as usize), l.0.len());
            std::ptr::copy_nonoverlapping(
                recover.as_ptr(),
                base.add(RECOVER64 as usize),
                recover.len(),
            );
            std::ptr::copy_nonoverlapping(s.0.as_ptr(), base.add(STUB32 as usize), s.0.len());
            std::ptr::copy_nonoverlapping(x.0.as_ptr(), base.add(EXIT32 as usize), x.0.len());
            std::ptr::write_bytes(base, 0, 0x100);
            let far = base.add(R_FARIN as usize);
            std::ptr::copy_nonoverlapping(le32(c(STUB32)).as_ptr(), far, 4);
            std::ptr::copy_nonoverlapping([0x23u8, 0].as_ptr(), far.add(4), 2);
            // Fault handlers.
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            for sig in [
                libc::SIGSEGV,
                libc::SIGILL,
                libc::SIGFPE,
                libc::SIGBUS,
                libc::SIGTRAP,
            ] {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        Native { _private: () }
    }

    /// Runs `code` natively with `regs` (EFLAGS: only CF PF AF ZF SF DF OF are loaded)
    /// and `data` at DATA_ADDR. Returns the outcome; `regs` and `data` receive the
    /// final state (EFLAGS as the host reports it).
    pub fn run(&mut self, code: &[u8], regs: &mut Regs32, data: &mut [u8]) -> NativeEnd {
        assert!(code.len() + 5 <= CODE_MAP && data.len() <= DATA_MAP);
        ALTSTACK.with(|_| ());
        // SAFETY: all addresses are in the fixed mappings made by init; the stubs
        // preserve the host ABI state (callee-saved registers, RSP, DF, FCW, DS/ES).
        unsafe {
            let cp = CODE_ADDR as *mut u8;
            std::ptr::copy_nonoverlapping(code.as_ptr(), cp, code.len());
            let end = CODE_ADDR + code.len() as u32;
            let rel = (CTL + EXIT32).wrapping_sub(end + 5);
            *cp.add(code.len()) = 0xe9;
            std::ptr::copy_nonoverlapping(le32(rel).as_ptr(), cp.add(code.len() + 1), 4);
            std::ptr::copy_nonoverlapping(data.as_ptr(), DATA_ADDR as *mut u8, data.len());
            let blk = CTL as *mut u32;
            for (k, v) in regs.gpr.iter().enumerate() {
                std::ptr::write_volatile(blk.add(k), *v);
            }
            std::ptr::write_volatile(blk.add(8), (regs.eflags & 0x0cd5) | 2);
            std::ptr::write_volatile((CTL + R_SIGNAL) as *mut u32, 0);
            IN_NATIVE.store(true, Ordering::SeqCst);
            let f: extern "C" fn() = std::mem::transmute((CTL + ENTRY64) as usize);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            f();
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            IN_NATIVE.store(false, Ordering::SeqCst);
            std::ptr::copy_nonoverlapping(DATA_ADDR as *const u8, data.as_mut_ptr(), data.len());
            let sig = std::ptr::read_volatile((CTL + R_SIGNAL) as *const u32);
            if sig != 0 {
                let ip = std::ptr::read_volatile((CTL + R_FAULTIP) as *const u32);
                return NativeEnd::Signal(sig as i32, ip);
            }
            for (k, v) in regs.gpr.iter_mut().enumerate() {
                *v = std::ptr::read_volatile(blk.add(k));
            }
            regs.eflags = std::ptr::read_volatile(blk.add(8));
        }
        NativeEnd::Done
    }
}
