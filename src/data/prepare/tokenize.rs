//! Pass 1 of `prepare-data`: the inputs, in runs of consecutive files called units, are
//! tokenised each on its own into the work folder, so ranks and threads can take any units in
//! any order and a resumed run keeps finished ones.
//!
//! Units ([`plan_units`]) group small files so a corpus of many small files does not cost a
//! few work files per input, while large files stay units of their own; the grouping is a
//! function of the input sizes and the number of workers only. For the unit starting at input
//! `k` the work folder gets `unit_<k>.tok` (its documents' tokens, `[EOT] ++ gpt2(doc)` each,
//! `u16` little-endian, no header), `unit_<k>.len` (each document's token count, `u64`
//! little-endian) and, last, `unit_<k>.json` ([`UnitMeta`]), which marks the unit done. A meta
//! is reused only when its inputs' paths, sizes and modification times and the pass's options
//! are unchanged and the two data files have the lengths it states.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::inputs::InputFile;
use crate::data::sources::{read_into, Batcher};
use crate::data::tokenizer::{Gpt2Tokenizer, EOT};

/// Text (in bytes) tokenised per parallel batch of one unit; bounds memory per thread.
const BATCH_BYTES: usize = 16 << 20;
/// Units never grow past this many input bytes (unless one file is larger).
const MAX_UNIT_BYTES: u64 = 256 << 20;

/// What pass 1 found in one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMeta {
    pub path: String,
    pub bytes: u64,
    pub mtime_ns: u64,
    pub documents: u64,
    /// Tokens of its documents, end-of-text prefixes included.
    pub tokens: u64,
    pub skipped_rows: u64,
    pub skipped_file: Option<String>,
}

/// What pass 1 found in one unit (inputs `first .. first + inputs.len()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitMeta {
    pub first: usize,
    /// The options of pass 1 (field, bad-row policy, validation rule, tokenizer).
    pub key: String,
    pub inputs: Vec<InputMeta>,
    pub documents: u64,
    pub tokens: u64,
    /// `residue_tokens[r]`: tokens of the documents whose index `i` in this unit has
    /// `i % val_every == r` (only residues below the document count are stored). With the
    /// unit's first global document index `g`, its validation documents are those with
    /// `i % val_every == (val_every - g % val_every) % val_every`.
    pub residue_tokens: Vec<u64>,
}

/// Consecutive runs of inputs: a run closes once it holds at least `target` bytes, with
/// `target = clamp(total / (8 · workers), 64 KiB, 256 MiB)` (or `target` given), so there are
/// enough units to keep `workers` busy and few enough to keep the work folder small.
pub fn plan_units(inputs: &[InputFile], workers: usize, target: Option<u64>) -> Vec<Range<usize>> {
    let total: u64 = inputs.iter().map(|f| f.bytes).sum();
    let target = target
        .unwrap_or_else(|| (total / (8 * workers.max(1) as u64)).clamp(64 << 10, MAX_UNIT_BYTES))
        .max(1);
    let mut units = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (k, f) in inputs.iter().enumerate() {
        bytes += f.bytes;
        if bytes >= target {
            units.push(start..k + 1);
            (start, bytes) = (k + 1, 0);
        }
    }
    if start < inputs.len() {
        units.push(start..inputs.len());
    }
    units
}

/// The files of the unit starting at input `first`: (tokens, document lengths, meta).
pub fn unit_files(work: &Path, first: usize) -> (PathBuf, PathBuf, PathBuf) {
    let stem = work.join(format!("unit_{first:07}"));
    (
        stem.with_extension("tok"),
        stem.with_extension("len"),
        stem.with_extension("json"),
    )
}

/// The pass's options as one string, stored in each meta.
pub fn pass_key(field: &str, skip_bad: bool, val_every: usize) -> String {
    format!(
        "tokenizer=gpt2-r50k;eot=prefix;field={field};skip_bad={skip_bad};val_every={val_every}"
    )
}

/// The meta of a unit if a previous run finished it with the same inputs and options.
pub fn finished(
    work: &Path,
    unit: &Range<usize>,
    inputs: &[InputFile],
    key: &str,
) -> Option<UnitMeta> {
    let (tok, len, meta) = unit_files(work, unit.start);
    let m: UnitMeta = serde_json::from_str(&fs::read_to_string(meta).ok()?).ok()?;
    let same_inputs = m.inputs.len() == unit.len()
        && m.inputs.iter().zip(&inputs[unit.clone()]).all(|(a, b)| {
            a.path == b.path.display().to_string() && a.bytes == b.bytes && a.mtime_ns == b.mtime_ns
        });
    let size = |p: PathBuf| fs::metadata(p).map(|x| x.len()).ok();
    let sizes = size(tok) == Some(2 * m.tokens) && size(len) == Some(8 * m.documents);
    (m.first == unit.start && m.key == key && same_inputs && sizes).then_some(m)
}

/// Tokenise one unit into the work folder and return its meta.
pub fn tokenize_unit(
    work: &Path,
    unit: &Range<usize>,
    inputs: &[InputFile],
    opts: &super::PrepareOptions,
    tok: &Gpt2Tokenizer,
) -> Result<UnitMeta> {
    let (tok_path, len_path, meta_path) = unit_files(work, unit.start);
    let mut tokens = Writer::create(&tmp(&tok_path))?;
    let mut lens: Vec<u64> = Vec::new();
    let mut sink = |batch: Vec<String>| -> Result<()> {
        let encoded: Vec<Vec<u32>> = batch
            .par_iter()
            .map(|d| {
                let mut ids = Vec::with_capacity(d.len() / 3 + 2);
                ids.push(EOT);
                ids.extend(tok.encode(d));
                ids
            })
            .collect();
        for ids in &encoded {
            tokens.put_tokens(ids)?;
            lens.push(ids.len() as u64);
        }
        Ok(())
    };
    let mut batcher = Batcher::new(BATCH_BYTES, &mut sink);
    let mut metas = Vec::with_capacity(unit.len());
    for input in &inputs[unit.clone()] {
        let before = batcher.pushed();
        let stats = read_into(&input.path, &opts.field, opts.skip_bad, &mut batcher)?;
        metas.push(InputMeta {
            path: input.path.display().to_string(),
            bytes: input.bytes,
            mtime_ns: input.mtime_ns,
            documents: batcher.pushed() - before,
            tokens: 0, // from the lengths below
            skipped_rows: stats.skipped_rows as u64,
            skipped_file: stats.skipped_file,
        });
    }
    batcher.flush()?;
    drop(batcher);
    tokens.finish(&tok_path)?;
    let mut at = 0usize;
    for m in &mut metas {
        let n = m.documents as usize;
        m.tokens = lens[at..at + n].iter().sum();
        at += n;
    }
    let v = opts.val_every;
    let mut residue = vec![0u64; v.min(lens.len())];
    for (i, &l) in lens.iter().enumerate() {
        residue[i % v] += l;
    }
    let mut len_file = Writer::create(&tmp(&len_path))?;
    let bytes: Vec<u8> = lens.iter().flat_map(|l| l.to_le_bytes()).collect();
    len_file.put(&bytes)?;
    len_file.finish(&len_path)?;
    let meta = UnitMeta {
        first: unit.start,
        key: pass_key(&opts.field, opts.skip_bad, v),
        documents: lens.len() as u64,
        tokens: lens.iter().sum(),
        inputs: metas,
        residue_tokens: residue,
    };
    let tmp_meta = tmp(&meta_path);
    fs::write(&tmp_meta, serde_json::to_string(&meta)?)
        .with_context(|| format!("writing {}", tmp_meta.display()))?;
    fs::rename(&tmp_meta, &meta_path)
        .with_context(|| format!("renaming {}", tmp_meta.display()))?;
    Ok(meta)
}

/// `x.tok` → `x.tok.tmp`.
fn tmp(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// A buffered file written under a temporary name, renamed into place when finished.
struct Writer {
    path: PathBuf,
    w: BufWriter<File>,
}

impl Writer {
    fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 20, f),
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.w
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Token ids as `u16` little-endian.
    fn put_tokens(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity(2 * ids.len());
        for &id in ids {
            let t = u16::try_from(id)
                .with_context(|| format!("token id {id} does not fit in a u16 shard"))?;
            buf.extend_from_slice(&t.to_le_bytes());
        }
        self.put(&buf)
    }

    /// Flush, sync and rename to `dest`.
    fn finish(self, dest: &Path) -> Result<()> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("flushing {}", self.path.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        fs::rename(&self.path, dest)
            .with_context(|| format!("renaming {} to {}", self.path.display(), dest.display()))
    }
}
