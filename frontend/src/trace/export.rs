//! `ox86 trace export --parquet`: the trace as a table, one row per instruction (or
//! per block with `--blocks`), for DuckDB, Polars, Spark and the like.
//!
//! A trace with memory accesses adds four list columns to an instruction's row, one
//! element per access in order (`mem_address`, `mem_size`, `mem_write`, `mem_value`),
//! and `mem_accesses` to a block's. Accesses that belong to no instruction that
//! completed (the pushes of an exception's delivery, the accesses of an instruction
//! an exception cut short) are not in the table; `ox86 trace dump` shows them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{
    BooleanBuilder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use clap::Args;
use ox86::trace::{MemAccess, Record};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::decode::Decoded;
use super::walk;

/// Rows per record batch (and parquet row group granule).
const BATCH: usize = 1 << 16;

/// Options of `ox86 trace export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trace file.
    file: PathBuf,
    /// The Parquet file to write.
    #[arg(long, value_name = "OUT")]
    parquet: PathBuf,
    /// One row per block run instead of one per instruction.
    #[arg(long)]
    blocks: bool,
    /// The first instruction count exported.
    #[arg(long, value_name = "N")]
    from: Option<u64>,
    /// Export instructions before this instruction count.
    #[arg(long, value_name = "N")]
    to: Option<u64>,
}

/// Per instruction of a block: offset of its bytes, length, mnemonic.
struct Shape {
    insns: Vec<(u16, u8, u16)>,
}

/// The columns being filled.
struct Columns {
    icount: UInt64Builder,
    address: UInt64Builder,
    phys: UInt64Builder,
    cr3: UInt64Builder,
    ring: UInt8Builder,
    mnemonic: StringBuilder,
    length: UInt8Builder,
    block: UInt32Builder,
    instructions: UInt32Builder,
    /// With memory accesses.
    memory: bool,
    mem_address: ListBuilder<UInt64Builder>,
    mem_size: ListBuilder<UInt8Builder>,
    mem_write: ListBuilder<BooleanBuilder>,
    mem_value: ListBuilder<UInt64Builder>,
    mem_accesses: UInt32Builder,
    rows: usize,
}

impl Columns {
    fn new(memory: bool) -> Columns {
        Columns {
            icount: UInt64Builder::with_capacity(BATCH),
            address: UInt64Builder::with_capacity(BATCH),
            phys: UInt64Builder::with_capacity(BATCH),
            cr3: UInt64Builder::with_capacity(BATCH),
            ring: UInt8Builder::with_capacity(BATCH),
            mnemonic: StringBuilder::with_capacity(BATCH, BATCH * 4),
            length: UInt8Builder::with_capacity(BATCH),
            block: UInt32Builder::with_capacity(BATCH),
            instructions: UInt32Builder::with_capacity(BATCH),
            memory,
            mem_address: ListBuilder::new(UInt64Builder::new()),
            mem_size: ListBuilder::new(UInt8Builder::new()),
            mem_write: ListBuilder::new(BooleanBuilder::new()),
            mem_value: ListBuilder::new(UInt64Builder::new()),
            mem_accesses: UInt32Builder::with_capacity(BATCH),
            rows: 0,
        }
    }

    /// Appends accesses `mems` (an instruction's) to its row's lists.
    fn accesses(&mut self, mems: &[(u64, MemAccess)]) {
        for (_, m) in mems {
            self.mem_address.values().append_value(m.lin);
            self.mem_size.values().append_value(m.size);
            self.mem_write.values().append_value(m.write);
            self.mem_value.values().append_value(m.value);
        }
        self.mem_address.append(true);
        self.mem_size.append(true);
        self.mem_write.append(true);
        self.mem_value.append(true);
    }

    fn batch(&mut self, schema: &Arc<Schema>, blocks: bool) -> Result<RecordBatch> {
        self.rows = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.icount.finish()),
            Arc::new(self.address.finish()),
            Arc::new(self.phys.finish()),
            Arc::new(self.cr3.finish()),
            Arc::new(self.ring.finish()),
            Arc::new(self.mnemonic.finish()),
        ];
        if blocks {
            cols.push(Arc::new(self.instructions.finish()));
            cols.push(Arc::new(self.block.finish()));
            if self.memory {
                cols.push(Arc::new(self.mem_accesses.finish()));
            }
        } else {
            cols.push(Arc::new(self.length.finish()));
            if self.memory {
                cols.push(Arc::new(self.mem_address.finish()));
                cols.push(Arc::new(self.mem_size.finish()));
                cols.push(Arc::new(self.mem_write.finish()));
                cols.push(Arc::new(self.mem_value.finish()));
            }
        }
        RecordBatch::try_new(schema.clone(), cols).context("cannot build a record batch")
    }
}

/// The table's schema.
fn schema(blocks: bool, memory: bool) -> Arc<Schema> {
    let list =
        |name: &str, t: DataType| Field::new_list(name, Field::new_list_field(t, true), false);
    let mut f = vec![
        Field::new("icount", DataType::UInt64, false),
        Field::new("address", DataType::UInt64, false),
        Field::new("phys", DataType::UInt64, false),
        Field::new("cr3", DataType::UInt64, false),
        Field::new("ring", DataType::UInt8, false),
        Field::new("mnemonic", DataType::Utf8, false),
    ];
    if blocks {
        f.push(Field::new("instructions", DataType::UInt32, false));
        f.push(Field::new("block", DataType::UInt32, false));
        if memory {
            f.push(Field::new("mem_accesses", DataType::UInt32, false));
        }
    } else {
        f.push(Field::new("length", DataType::UInt8, false));
        if memory {
            f.push(list("mem_address", DataType::UInt64));
            f.push(list("mem_size", DataType::UInt8));
            f.push(list("mem_write", DataType::Boolean));
            f.push(list("mem_value", DataType::UInt64));
        }
    }
    Arc::new(Schema::new(f))
}

/// Writes the table.
pub fn run(a: &ExportArgs) -> Result<ExitCode> {
    let mut w = walk::open(&a.file)?;
    let memory = w.r.has_memory();
    let schema = schema(a.blocks, memory);
    // The instruction count only grows: delta encoding makes it almost free.
    let icount = parquet::schema::types::ColumnPath::from("icount");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(icount.clone(), false)
        .set_column_encoding(icount, parquet::basic::Encoding::DELTA_BINARY_PACKED)
        .build();
    let out = std::fs::File::create(&a.parquet)
        .with_context(|| format!("cannot create {}", a.parquet.display()))?;
    let mut pw = ArrowWriter::try_new(out, schema.clone(), Some(props))
        .context("cannot start the Parquet file")?;
    let from = a.from.unwrap_or(0);
    let to = a.to.unwrap_or(u64::MAX);
    let mut decoded = Decoded::default();
    let mut shapes: Vec<Option<Shape>> = Vec::new();
    // Mnemonic names, lower case, by number.
    let mut names: Vec<String> = Vec::new();
    let mut name_ids: std::collections::HashMap<iced_x86::Mnemonic, u16> = Default::default();
    let mut c = Columns::new(memory);
    // Memory accesses wait for the block of their instruction.
    let mut mems: Vec<(u64, MemAccess)> = Vec::new();
    let write_err = |p: &Path| format!("cannot write {}", p.display());
    loop {
        let (id, icount) = match w.next() {
            Ok(Some(Record::Block { id, icount })) => (id, icount),
            Ok(Some(Record::Mem { icount, access })) => {
                if !access.delivery {
                    mems.push((icount, access));
                }
                continue;
            }
            Ok(Some(_)) => {
                // Accesses of an instruction cut short belong to no row.
                mems.clear();
                continue;
            }
            Ok(None) => break,
            Err(e) => return Ok(w.fail(&e)),
        };
        let def = w.r.def(id);
        let n = u64::from(def.insns);
        // This block's accesses lead the list; later blocks' stay.
        let mine = mems.iter().take_while(|(c, _)| *c < icount + n).count();
        if icount + n <= from {
            mems.drain(..mine);
            continue;
        }
        if icount >= to {
            break;
        }
        let i = id as usize;
        if i >= shapes.len() {
            shapes.resize_with(i + 1, || None);
        }
        let shape = shapes[i].get_or_insert_with(|| {
            let mut off = 0u16;
            let insns = decoded
                .get(id, def)
                .iter()
                .map(|x| {
                    let m = *name_ids.entry(x.mnemonic()).or_insert_with(|| {
                        names.push(format!("{:?}", x.mnemonic()).to_lowercase());
                        (names.len() - 1) as u16
                    });
                    let s = (off, x.len() as u8, m);
                    off += x.len() as u16;
                    s
                })
                .collect();
            Shape { insns }
        });
        let (cr3, ring) = (w.ctx.cr3, w.ctx.cpl);
        let lin = def.lin();
        if a.blocks {
            c.icount.append_value(icount);
            c.address.append_value(lin);
            c.phys.append_value(def.phys);
            c.cr3.append_value(cr3);
            c.ring.append_value(ring);
            c.mnemonic.append_value(
                shape
                    .insns
                    .first()
                    .map_or("", |s| names[usize::from(s.2)].as_str()),
            );
            c.instructions.append_value(def.insns);
            c.block.append_value(id);
            if memory {
                c.mem_accesses.append_value(mine as u32);
            }
            c.rows += 1;
        } else {
            // The accesses are in instruction order: each row takes those of its
            // instruction from the front.
            let mut rest = &mems[..mine];
            for (k, &(off, len, m)) in shape.insns.iter().enumerate() {
                let ic = icount + k as u64;
                let own = rest.iter().take_while(|(c, _)| *c == ic).count();
                let (here, after) = rest.split_at(own);
                rest = after;
                if ic < from || ic >= to {
                    continue;
                }
                c.icount.append_value(ic);
                c.address
                    .append_value(lin.wrapping_add(u64::from(off)) & 0xffff_ffff);
                c.phys.append_value(def.phys + u64::from(off));
                c.cr3.append_value(cr3);
                c.ring.append_value(ring);
                c.mnemonic.append_value(&names[usize::from(m)]);
                c.length.append_value(len);
                if memory {
                    c.accesses(here);
                }
                c.rows += 1;
            }
        }
        mems.drain(..mine);
        if c.rows >= BATCH {
            let b = c.batch(&schema, a.blocks)?;
            pw.write(&b).with_context(|| write_err(&a.parquet))?;
        }
    }
    if c.rows > 0 {
        let b = c.batch(&schema, a.blocks)?;
        pw.write(&b).with_context(|| write_err(&a.parquet))?;
    }
    pw.close().with_context(|| write_err(&a.parquet))?;
    Ok(ExitCode::SUCCESS)
}
