//! `ox86 trace export --parquet`: the trace as a table, one row per instruction (or
//! per block with `--blocks`), for DuckDB, Polars, Spark and the like.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{StringBuilder, UInt32Builder, UInt64Builder, UInt8Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use clap::Args;
use ox86::trace::Record;
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
    rows: usize,
}

impl Columns {
    fn new() -> Columns {
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
            rows: 0,
        }
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
        } else {
            cols.push(Arc::new(self.length.finish()));
        }
        RecordBatch::try_new(schema.clone(), cols).context("cannot build a record batch")
    }
}

/// The table's schema.
fn schema(blocks: bool) -> Arc<Schema> {
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
    } else {
        f.push(Field::new("length", DataType::UInt8, false));
    }
    Arc::new(Schema::new(f))
}

/// Writes the table.
pub fn run(a: &ExportArgs) -> Result<ExitCode> {
    let mut w = walk::open(&a.file)?;
    let schema = schema(a.blocks);
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
    let mut c = Columns::new();
    let write_err = |p: &Path| format!("cannot write {}", p.display());
    loop {
        let (id, icount) = match w.next() {
            Ok(Some(Record::Block { id, icount })) => (id, icount),
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => return Ok(w.fail(&e)),
        };
        let def = w.r.def(id);
        let n = u64::from(def.insns);
        if icount + n <= from {
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
            c.rows += 1;
        } else {
            for (k, &(off, len, m)) in shape.insns.iter().enumerate() {
                let ic = icount + k as u64;
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
                c.rows += 1;
            }
        }
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
