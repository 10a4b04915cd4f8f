//! `ferrotron prepare-data`: turn text files into llm.c token shards.
//!
//! Input: files and/or directories (recursed). Files are taken in sorted path
//! order. Inside directories, hidden entries (name starting with `.`) and
//! files ending in `.dat` or `.u8` (the binary indexes of the Debian
//! `fortunes` package) are skipped; files named explicitly are always read.
//! Files that are not valid UTF-8 or contain NUL bytes are skipped with a
//! warning.
//!
//! Documents: in text files a line consisting only of `%` (optionally followed by
//! `\r`) separates documents, as in fortune files; a file without such lines is a
//! single document. JSONL files (`*.jsonl`, `*.ndjson`) hold one document per line
//! in a string field (`field`, default `text`); any input may be gzip (`.gz`) or
//! zstd (`.zst`) compressed ([`super::sources`]). Documents are trimmed and empty
//! ones are dropped.
//!
//! Output: each document is encoded as `[EOT] ++ gpt2(document)` (llm.c
//! convention). Document `i` (global index over all inputs) goes to the
//! validation split if `i % val_every == 0`, otherwise to the training split.
//! Splits are written to `out_dir/train_NNNNNN.bin` and `out_dir/val_NNNNNN.bin`
//! (llm.c shard format, see [`crate::data::shard`]), each at most
//! `shard_tokens` tokens; every split gets at least one (possibly empty)
//! shard. Stale `train_NNNNNN.bin` / `val_NNNNNN.bin` files from an earlier
//! run in `out_dir` are removed. The output is byte-for-byte deterministic.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::shard::write_shard;
use super::sources::read_documents;
use super::tokenizer::{Gpt2Tokenizer, EOT};

/// Text (in bytes) tokenised per parallel batch; bounds peak memory.
const BATCH_BYTES: usize = 64 << 20;

/// Options for [`prepare_data`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Every `val_every`-th document (indices 0, val_every, 2*val_every, ...)
    /// goes to validation. Default 20. Must be >= 1.
    pub val_every: usize,
    /// Maximum tokens per output shard. Default 100,000,000 (as llm.c).
    pub shard_tokens: usize,
    /// The JSON field holding a document's text in JSONL inputs. Default `text`.
    pub field: String,
    /// Skip (and count) bad JSONL lines instead of stopping at the first.
    pub skip_bad: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            val_every: 20,
            shard_tokens: 100_000_000,
            field: "text".into(),
            skip_bad: false,
        }
    }
}

/// What [`prepare_data`] did.
#[derive(Debug, Clone, Default)]
pub struct PrepareSummary {
    /// Non-empty documents tokenised (train + val).
    pub documents: usize,
    /// Documents in the training split.
    pub train_documents: usize,
    /// Documents in the validation split.
    pub val_documents: usize,
    /// Tokens written to training shards (EOT prefixes included).
    pub train_tokens: usize,
    /// Tokens written to validation shards (EOT prefixes included).
    pub val_tokens: usize,
    /// Input files that were read (sorted), excluding skipped ones.
    pub input_files: Vec<PathBuf>,
    /// Bad JSONL lines skipped (with `skip_bad`).
    pub skipped_lines: usize,
    /// Shard files written: all train shards, then all val shards.
    pub files: Vec<PathBuf>,
}

/// Tokenise `inputs` into train/val shards under `out_dir` (created if
/// missing). See the module docs for the exact rules.
pub fn prepare_data(
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &PrepareOptions,
) -> Result<PrepareSummary> {
    ensure!(opts.val_every >= 1, "val_every must be >= 1");
    ensure!(opts.shard_tokens >= 1, "shard_tokens must be >= 1");
    let files = collect_input_files(inputs)?;
    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let tok = Gpt2Tokenizer::new()?;
    let mut train = ShardWriter::new(out_dir, "train", opts.shard_tokens);
    let mut val = ShardWriter::new(out_dir, "val", opts.shard_tokens);
    let mut summary = PrepareSummary::default();
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0usize;
    for file in &files {
        let Some(fd) = read_documents(file, &opts.field, opts.skip_bad)? else {
            continue;
        };
        summary.input_files.push(file.clone());
        summary.skipped_lines += fd.skipped_lines;
        for doc in fd.docs {
            batch_bytes += doc.len();
            batch.push(doc);
        }
        if batch_bytes >= BATCH_BYTES {
            let split = Split::new(opts.val_every, &mut train, &mut val);
            tokenize_batch(&tok, &batch, &mut summary, split)?;
            batch.clear();
            batch_bytes = 0;
        }
    }
    let split = Split::new(opts.val_every, &mut train, &mut val);
    tokenize_batch(&tok, &batch, &mut summary, split)?;
    if summary.documents == 0 {
        bail!(
            "no usable input text found in {} (after skipping hidden, .dat/.u8, \
             non-UTF-8 and binary files, and empty documents)",
            display_paths(inputs)
        );
    }
    if summary.skipped_lines > 0 {
        log::warn!(
            "prepare-data: skipped {} bad JSONL line(s) (--skip-bad)",
            summary.skipped_lines
        );
    }
    summary.files = train.finish()?;
    summary.files.extend(val.finish()?);
    summary.train_tokens = train.total;
    summary.val_tokens = val.total;
    for (writer, name) in [(&train, "train"), (&val, "val")] {
        if writer.total == 0 {
            log::warn!("prepare-data: the {name} split is empty (wrote an empty shard)");
        }
    }
    log::info!(
        "prepare-data: {} input files, {} documents ({} train / {} val), \
         {} train tokens, {} val tokens, {} shard files in {}",
        summary.input_files.len(),
        summary.documents,
        summary.train_documents,
        summary.val_documents,
        summary.train_tokens,
        summary.val_tokens,
        summary.files.len(),
        out_dir.display()
    );
    Ok(summary)
}

/// The two writers plus the routing rule for one batch.
struct Split<'a> {
    val_every: usize,
    train: &'a mut ShardWriter,
    val: &'a mut ShardWriter,
}

impl<'a> Split<'a> {
    fn new(val_every: usize, train: &'a mut ShardWriter, val: &'a mut ShardWriter) -> Self {
        Self {
            val_every,
            train,
            val,
        }
    }
}

/// Tokenise `docs` in parallel (order preserved) and route each to its split.
fn tokenize_batch(
    tok: &Gpt2Tokenizer,
    docs: &[String],
    summary: &mut PrepareSummary,
    split: Split<'_>,
) -> Result<()> {
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| {
            let mut ids = Vec::with_capacity(d.len() / 3 + 2);
            ids.push(EOT);
            ids.extend(tok.encode(d));
            ids
        })
        .collect();
    for ids in &encoded {
        if summary.documents.is_multiple_of(split.val_every) {
            split.val.push(ids)?;
            summary.val_documents += 1;
        } else {
            split.train.push(ids)?;
            summary.train_documents += 1;
        }
        summary.documents += 1;
    }
    Ok(())
}

/// Accumulates tokens of one split and writes `<prefix>_NNNNNN.bin` shards.
struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    shard_tokens: usize,
    buf: Vec<u16>,
    written: Vec<PathBuf>,
    total: usize,
}

impl ShardWriter {
    fn new(dir: &Path, prefix: &'static str, shard_tokens: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            prefix,
            shard_tokens,
            buf: Vec::new(),
            written: Vec::new(),
            total: 0,
        }
    }

    /// Append one document's tokens, writing every shard that fills up.
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            let t = u16::try_from(id)
                .with_context(|| format!("token id {id} does not fit in a u16 shard"))?;
            self.buf.push(t);
            if self.buf.len() == self.shard_tokens {
                self.write_buf()?;
            }
        }
        self.total += ids.len();
        Ok(())
    }

    fn write_buf(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!("{}_{:06}.bin", self.prefix, self.written.len()));
        write_shard(&path, &self.buf)?;
        self.written.push(path);
        self.buf.clear();
        Ok(())
    }

    /// Write the final partial shard (or an empty one if nothing was written),
    /// remove stale shards of this prefix, and return the files written.
    fn finish(&mut self) -> Result<Vec<PathBuf>> {
        if !self.buf.is_empty() || self.written.is_empty() {
            self.write_buf()?;
        }
        remove_stale_shards(&self.dir, self.prefix, self.written.len())?;
        Ok(self.written.clone())
    }
}

/// Delete `<prefix>_NNNNNN.bin` files in `dir` with index >= `keep`.
fn remove_stale_shards(dir: &Path, prefix: &str, keep: usize) -> Result<()> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("listing directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing directory {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let index = name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_prefix('_'))
            .and_then(|s| s.strip_suffix(".bin"))
            .filter(|s| s.len() >= 6 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok());
        if matches!(index, Some(i) if i >= keep) {
            let path = entry.path();
            log::warn!("prepare-data: removing stale shard {}", path.display());
            fs::remove_file(&path)
                .with_context(|| format!("removing stale shard {}", path.display()))?;
        }
    }
    Ok(())
}

/// All input files, sorted by path and deduplicated.
fn collect_input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    ensure!(!inputs.is_empty(), "no input paths given");
    let mut files = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input)
            .with_context(|| format!("input path {} does not exist", input.display()))?;
        if meta.is_dir() {
            walk_dir(input, &mut files)?;
        } else {
            files.push(input.clone());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Whether a directory entry is skipped by name (hidden, `.dat`, `.u8`).
fn skipped_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".dat") || name.ends_with(".u8")
}

/// Recursively collect files under `dir`. Symlinks to files are followed;
/// symlinks to directories are not (avoids cycles).
fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("listing directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing directory {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        if skipped_name(&name.to_string_lossy()) {
            continue;
        }
        let ftype = entry
            .file_type()
            .with_context(|| format!("reading file type of {}", path.display()))?;
        if ftype.is_dir() {
            walk_dir(&path, out)?;
        } else if ftype.is_file() {
            out.push(path);
        } else if ftype.is_symlink() {
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => out.push(path),
                Ok(_) => log::debug!("skipping symlink {} (not a file)", path.display()),
                Err(e) => log::warn!("skipping broken symlink {}: {e}", path.display()),
            }
        }
    }
    Ok(())
}

/// Split fortune-style text on lines that are exactly `%` (or `%\r`);
/// returns trimmed, non-empty documents in order.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches('\n').trim_end_matches('\r');
        if content == "%" {
            docs.push(&text[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

fn display_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::read_shard;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferrotron-prepare-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn splits_fortune_format() {
        let text = "first\nline two\n%\n  second  \n%\r\n%\n\n%\nthird 50% off\n%";
        assert_eq!(
            split_documents(text),
            vec!["first\nline two", "second", "third 50% off"]
        );
        assert_eq!(split_documents("no separators\n"), vec!["no separators"]);
        assert!(split_documents(" \n%\n").is_empty());
    }

    /// Corpus layout: a/x (3 docs), a/x.dat, a/x.u8, a/.hidden, b.txt (1 doc),
    /// bin (NUL bytes), latin1 (invalid UTF-8).
    fn make_corpus(dir: &Path) -> PathBuf {
        let root = dir.join("corpus");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/x"), "one\n%\ntwo\n%\nthree\n").unwrap();
        fs::write(root.join("a/x.dat"), "should be skipped\n").unwrap();
        fs::write(root.join("a/x.u8"), "should be skipped\n").unwrap();
        fs::write(root.join("a/.hidden"), "should be skipped\n").unwrap();
        fs::write(root.join("b.txt"), "Hello world").unwrap();
        fs::write(root.join("bin"), b"abc\0def").unwrap();
        fs::write(root.join("latin1"), b"caf\xe9").unwrap();
        root
    }

    fn all_tokens(files: &[PathBuf], prefix: &str) -> Vec<u16> {
        files
            .iter()
            .filter(|f| f.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .flat_map(|f| read_shard(f).unwrap())
            .collect()
    }

    #[test]
    fn skips_and_splits() {
        let dir = temp_dir("skip");
        let root = make_corpus(&dir);
        let out = dir.join("out");
        let opts = PrepareOptions {
            val_every: 2,
            shard_tokens: 3,
            ..Default::default()
        };
        let s = prepare_data(std::slice::from_ref(&root), &out, &opts).unwrap();
        assert_eq!(s.input_files, vec![root.join("a/x"), root.join("b.txt")]);
        // docs: 0 "one"(val) 1 "two"(train) 2 "three"(val) 3 "Hello world"(train)
        assert_eq!((s.documents, s.train_documents, s.val_documents), (4, 2, 2));
        let tok = Gpt2Tokenizer::new().unwrap();
        let doc = |t: &str| {
            let mut v = vec![EOT];
            v.extend(tok.encode(t));
            v
        };
        let want_train: Vec<u16> = [doc("two"), doc("Hello world")]
            .concat()
            .iter()
            .map(|&t| t as u16)
            .collect();
        let want_val: Vec<u16> = [doc("one"), doc("three")]
            .concat()
            .iter()
            .map(|&t| t as u16)
            .collect();
        assert_eq!(all_tokens(&s.files, "train_"), want_train);
        assert_eq!(all_tokens(&s.files, "val_"), want_val);
        assert_eq!(s.train_tokens, want_train.len());
        assert_eq!(s.val_tokens, want_val.len());
        // shard_tokens = 3: ceil(len / 3) shards per split, all but last full.
        assert_eq!(
            s.files.len(),
            want_train.len().div_ceil(3) + want_val.len().div_ceil(3)
        );
        assert_eq!(read_shard(&out.join("train_000000.bin")).unwrap().len(), 3);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deterministic_and_removes_stale_shards() {
        let dir = temp_dir("det");
        let root = make_corpus(&dir);
        let text: String = (0..500)
            .map(|i| format!("fortune number {i}\n%\n"))
            .collect();
        fs::write(root.join("many"), text).unwrap();
        let opts = PrepareOptions {
            val_every: 20,
            shard_tokens: 1000,
            ..Default::default()
        };
        let out1 = dir.join("out1");
        let out2 = dir.join("out2");
        fs::create_dir_all(&out2).unwrap();
        fs::write(out2.join("train_000099.bin"), b"stale").unwrap();
        let s1 = prepare_data(std::slice::from_ref(&root), &out1, &opts).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let s2 = pool
            .install(|| prepare_data(std::slice::from_ref(&root), &out2, &opts))
            .unwrap();
        assert!(!out2.join("train_000099.bin").exists());
        assert_eq!(s1.documents, 504);
        assert_eq!(s1.val_documents, 26); // indices 0, 20, ..., 500
        assert_eq!(s1.files.len(), s2.files.len());
        for (a, b) in s1.files.iter().zip(&s2.files) {
            assert_eq!(a.file_name(), b.file_name());
            assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap());
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors() {
        let dir = temp_dir("err");
        let missing = dir.join("nope");
        let msg = format!(
            "{:#}",
            prepare_data(
                std::slice::from_ref(&missing),
                &dir.join("o"),
                &PrepareOptions::default()
            )
            .unwrap_err()
        );
        assert!(
            msg.contains("nope") && msg.contains("does not exist"),
            "{msg}"
        );

        let empty = dir.join("empty");
        fs::create_dir_all(&empty).unwrap();
        fs::write(empty.join("x.dat"), "skipped").unwrap();
        let msg = format!(
            "{:#}",
            prepare_data(
                std::slice::from_ref(&empty),
                &dir.join("o"),
                &PrepareOptions::default()
            )
            .unwrap_err()
        );
        assert!(
            msg.contains("no usable input text") && msg.contains("empty"),
            "{msg}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// Timing run on the Debian fortunes corpus:
    /// `cargo test --lib data::prepare -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs /usr/share/games/fortunes; prints timing"]
    fn fortunes_corpus() {
        let src = PathBuf::from("/usr/share/games/fortunes");
        let out = temp_dir("fortunes");
        let t0 = std::time::Instant::now();
        let s = prepare_data(&[src], &out, &PrepareOptions::default()).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "fortunes: {} input files, {} documents ({} train / {} val), \
             {} train tokens, {} val tokens, {} shard files, {secs:.2} s",
            s.input_files.len(),
            s.documents,
            s.train_documents,
            s.val_documents,
            s.train_tokens,
            s.val_tokens,
            s.files.len()
        );
        fs::remove_dir_all(out).unwrap();
    }
}
