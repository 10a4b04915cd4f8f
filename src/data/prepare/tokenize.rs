//! Pass 1 of `prepare-data`: each input file is tokenised on its own into the work folder, so
//! ranks and threads can take any files in any order and a resumed run keeps finished ones.
//!
//! For input `k` (its index in the sorted input list) the work folder gets
//! `src_<k>.tok` (the documents' tokens, `[EOT] ++ gpt2(doc)` each, `u16` little-endian,
//! no header), `src_<k>.len` (each document's token count, `u64` little-endian) and, last,
//! `src_<k>.json` ([`SourceMeta`]), which marks the input done. A meta is reused only when the
//! input's path, size and modification time and the pass's options are unchanged and the two
//! data files have the lengths it states.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::inputs::InputFile;
use crate::data::sources::{classify, for_each_batch};
use crate::data::tokenizer::{Gpt2Tokenizer, EOT};

/// Text (in bytes) tokenised per parallel batch of one input; bounds memory per thread.
const BATCH_BYTES: usize = 16 << 20;

/// What pass 1 found in one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    pub index: usize,
    pub path: String,
    pub bytes: u64,
    pub mtime_ns: u64,
    /// The options of pass 1 (field, bad-row policy, validation rule, tokenizer).
    pub key: String,
    pub documents: u64,
    /// Tokens of all documents, end-of-text prefixes included.
    pub tokens: u64,
    pub skipped_rows: u64,
    pub skipped_file: Option<String>,
    /// `residue_tokens[r]`: tokens of the documents whose index `i` in this file has
    /// `i % val_every == r` (only residues below the document count are stored). With the
    /// file's first global document index `g`, its validation documents are those with
    /// `i % val_every == (val_every - g % val_every) % val_every`.
    pub residue_tokens: Vec<u64>,
}

/// The files of input `index` in the work folder: (tokens, document lengths, meta).
pub fn source_files(work: &Path, index: usize) -> (PathBuf, PathBuf, PathBuf) {
    let stem = work.join(format!("src_{index:07}"));
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

/// The meta of input `index` if a previous run finished it with the same input and options.
pub fn finished(work: &Path, index: usize, input: &InputFile, key: &str) -> Option<SourceMeta> {
    let (tok, len, meta) = source_files(work, index);
    let m: SourceMeta = serde_json::from_str(&fs::read_to_string(meta).ok()?).ok()?;
    let same = m.index == index
        && m.path == input.path.display().to_string()
        && m.bytes == input.bytes
        && m.mtime_ns == input.mtime_ns
        && m.key == key;
    let size = |p: PathBuf| fs::metadata(p).map(|x| x.len()).ok();
    (same && size(tok) == Some(2 * m.tokens) && size(len) == Some(8 * m.documents)).then_some(m)
}

/// Tokenise input `index` into the work folder and return its meta.
pub fn tokenize_source(
    work: &Path,
    index: usize,
    input: &InputFile,
    opts: &super::PrepareOptions,
    tok: &Gpt2Tokenizer,
) -> Result<SourceMeta> {
    let (tok_path, len_path, meta_path) = source_files(work, index);
    let tmp = |p: &Path| p.with_extension(format!("{}.tmp", ext(p)));
    let mut tokens = Writer::create(&tmp(&tok_path))?;
    let mut lens = Writer::create(&tmp(&len_path))?;
    let v = opts.val_every;
    let mut residue: Vec<u64> = Vec::new();
    let (mut docs, mut total) = (0u64, 0u64);
    let stats = for_each_batch(
        &input.path,
        &opts.field,
        opts.skip_bad,
        BATCH_BYTES,
        &mut |batch| {
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
                lens.put(&(ids.len() as u64).to_le_bytes())?;
                let r = (docs % v as u64) as usize;
                if r == residue.len() {
                    residue.push(0);
                }
                residue[r] += ids.len() as u64;
                docs += 1;
                total += ids.len() as u64;
            }
            Ok(())
        },
    )?;
    tokens.finish(&tok_path)?;
    lens.finish(&len_path)?;
    let (format, comp) = classify(&input.path);
    log::debug!(
        "{} ({} {}): {docs} documents, {total} tokens",
        input.path.display(),
        format.name(),
        comp.name()
    );
    let meta = SourceMeta {
        index,
        path: input.path.display().to_string(),
        bytes: input.bytes,
        mtime_ns: input.mtime_ns,
        key: pass_key(&opts.field, opts.skip_bad, v),
        documents: docs,
        tokens: total,
        skipped_rows: stats.skipped_rows as u64,
        skipped_file: stats.skipped_file,
        residue_tokens: residue,
    };
    let tmp_meta = tmp(&meta_path);
    fs::write(&tmp_meta, serde_json::to_string(&meta)?)
        .with_context(|| format!("writing {}", tmp_meta.display()))?;
    fs::rename(&tmp_meta, &meta_path)
        .with_context(|| format!("renaming {}", tmp_meta.display()))?;
    Ok(meta)
}

fn ext(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default()
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
