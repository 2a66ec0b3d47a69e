//! The instructions of a trace's blocks, decoded once each from the code bytes the
//! trace holds.

use iced_x86::Instruction;
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
        self.blocks[i].get_or_insert_with(|| def.decode())
    }
}
