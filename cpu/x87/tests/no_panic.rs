//! Robustness: random x87 instructions on random states never panic and never
//! report `Unimplemented` (runs on any host; no native execution).

mod oracle;

use oracle::*;
use ox86_x87::{X87Error, X87State};

#[test]
fn random_instructions_never_panic() {
    let mut rng = Rng::new(99);
    let mut executed = 0u32;
    for _ in 0..60_000 {
        let mut bytes = [0u8; 8];
        for b in bytes.iter_mut() {
            *b = rng.next() as u8;
        }
        bytes[0] = 0xD8 + (rng.below(8) as u8);
        if rng.below(10) == 0 {
            bytes[0..3].copy_from_slice(&[0x0F, 0xAE, (rng.next() as u8 & 0x38) | 6]);
            bytes[2] &= 0x0F;
        }
        let insn = decode32(&bytes);
        if !X87State::is_x87(insn.code()) {
            continue;
        }
        let mut img = gen_state(
            &mut rng,
            StateGen {
                unmask_pct: 50,
                room_to_push: false,
            },
        );
        // Garbage everywhere, including reserved bits and FCW.
        for b in img.0[..4].iter_mut() {
            *b = rng.next() as u8;
        }
        let mut mem = MemBuf([0; 512]);
        for b in mem.0.iter_mut() {
            *b = rng.next() as u8;
        }
        let mut aux = [rng.next() & 0xFFF, 0];
        let mut s = X87State::default();
        let mut c = Ctx {
            mem: MemBuf([0; 512]),
            eflags: aux[0] as u32,
            ax: None,
        };
        c.mem.0[..108].copy_from_slice(&img.0);
        s.execute(&decode32(&[0xDD, 0x26]), &mut c).expect("frstor");
        c.mem = mem;
        match s.execute(&insn, &mut c) {
            Ok(()) => executed += 1,
            Err(X87Error::Unimplemented(code)) => panic!("{code:?} unimplemented"),
            Err(X87Error::Fault(())) => {}
        }
        aux[1] = 0;
        let _ = aux;
    }
    assert!(executed > 30_000, "{executed}");
}
