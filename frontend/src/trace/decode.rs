//! The instructions of a trace's blocks, decoded once each from the code bytes the
//! trace holds.

use iced_x86::{Decoder, DecoderOptions, Instruction};
use ox86::trace::BlockDef;

/// Decoded blocks by id.
#[derive(Default)]
pub struct Decoded {
    blocks: Vec<Option<Box<[Instruction]>>>,
}

impl Decoded {
    /// The instructions of block `id` (defined by `def`): as many as the block holds,
    /// each with its EIP.
    pub fn get(&mut self, id: u32, def: &BlockDef) -> &[Instruction] {
        let i = id as usize;
        if i >= self.blocks.len() {
            self.blocks.resize(i + 1, None);
        }
        self.blocks[i].get_or_insert_with(|| decode(def))
    }
}

/// Decodes `def`'s instructions.
pub fn decode(def: &BlockDef) -> Box<[Instruction]> {
    let mask = if def.bitness == 16 {
        0xffff
    } else {
        0xffff_ffff
    };
    let mut d = Decoder::with_ip(def.bitness, &def.bytes, def.eip, DecoderOptions::NONE);
    let mut v = Vec::with_capacity(def.insns as usize);
    let mut ip = def.eip;
    while v.len() < def.insns as usize && d.can_decode() {
        d.set_ip(ip);
        let mut i = d.decode();
        i.set_ip(ip);
        ip = (ip + i.len() as u64) & mask;
        v.push(i);
    }
    v.into_boxed_slice()
}
