//! Input formats of `prepare-data`, told apart by file name:
//!
//! * `*.jsonl` / `*.ndjson`: one JSON object per line; the document is the string in field
//!   `field` (default `text`). Blank lines are skipped. A line that is not JSON, lacks the
//!   field, has a non-string field or is not UTF-8 is an error naming the file and line (or,
//!   with `skip_bad`, skipped and counted). Read as a stream: memory does not grow with the file.
//! * `*.parquet`: the top-level string column `field` ([`super::parquet_text`]), row group by
//!   row group; a null or non-UTF-8 value is an error naming the file and row (or skipped and
//!   counted with `skip_bad`).
//! * anything else: plain text, documents separated by lines holding only `%` (fortune
//!   format); a file without such lines is one document. Binary (NUL bytes) or non-UTF-8 text
//!   files are skipped with a warning, as a folder of text may hold such files.
//!
//! Any of them may be compressed: `*.gz` (gzip) or `*.zst` (zstd), e.g. `shard-00.jsonl.zst`
//! (Parquet files compress their pages themselves; a compressed `.parquet.gz` is read into
//! memory first). Every format yields documents trimmed of surrounding whitespace, empty ones
//! dropped, handed on in batches of about `batch_bytes` of text.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::prepare::split_documents;

/// How a file's documents are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
    Parquet,
}

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Format {
    /// Lower-case name (as in `manifest.json`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }
}

impl Compression {
    /// Lower-case name (as in `manifest.json`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// The format and compression of `path`, from its name.
pub fn classify(path: &Path) -> (Format, Compression) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (inner, comp) = if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s.to_string(), Compression::Zstd)
    } else {
        (name, Compression::None)
    };
    let format = if inner.ends_with(".jsonl") || inner.ends_with(".ndjson") {
        Format::Jsonl
    } else if inner.ends_with(".parquet") {
        Format::Parquet
    } else {
        Format::Text
    };
    (format, comp)
}

/// What reading one input file found besides its documents.
#[derive(Debug, Default, Clone)]
pub struct SourceStats {
    /// Bad JSONL lines or Parquet rows skipped (with `skip_bad`).
    pub skipped_rows: usize,
    /// Why the whole file was skipped (a binary or non-UTF-8 plain-text file).
    pub skipped_file: Option<String>,
}

/// Where the documents of one batch go; returns an error to stop reading.
pub type Sink<'a> = dyn FnMut(Vec<String>) -> Result<()> + 'a;

/// Collects documents into batches of about `limit` bytes of text for a [`Sink`].
pub struct Batcher<'a, 'b> {
    docs: Vec<String>,
    bytes: usize,
    limit: usize,
    /// Documents pushed so far (kept, i.e. non-empty).
    pushed: u64,
    sink: &'a mut Sink<'b>,
}

impl<'a, 'b> Batcher<'a, 'b> {
    pub fn new(limit: usize, sink: &'a mut Sink<'b>) -> Self {
        Self {
            docs: Vec::new(),
            bytes: 0,
            limit,
            pushed: 0,
            sink,
        }
    }

    /// Add one document (trimmed; dropped when empty).
    pub fn push(&mut self, doc: &str) -> Result<()> {
        let doc = doc.trim();
        if doc.is_empty() {
            return Ok(());
        }
        self.bytes += doc.len();
        self.pushed += 1;
        self.docs.push(doc.to_string());
        if self.bytes >= self.limit {
            self.flush()?;
        }
        Ok(())
    }

    /// Documents pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Hand on what is collected.
    pub fn flush(&mut self) -> Result<()> {
        if !self.docs.is_empty() {
            self.bytes = 0;
            (self.sink)(std::mem::take(&mut self.docs))?;
        }
        Ok(())
    }
}

/// Reads the documents of `path` (see the module docs), handing them to `sink` in order, in
/// batches of about `batch_bytes` bytes of text.
pub fn for_each_batch(
    path: &Path,
    field: &str,
    skip_bad: bool,
    batch_bytes: usize,
    sink: &mut Sink<'_>,
) -> Result<SourceStats> {
    let mut batcher = Batcher::new(batch_bytes, sink);
    let stats = read_into(path, field, skip_bad, &mut batcher)?;
    batcher.flush()?;
    Ok(stats)
}

/// Reads the documents of `path` into `out` (which may already hold documents of earlier
/// files; nothing is flushed at the end).
pub fn read_into(
    path: &Path,
    field: &str,
    skip_bad: bool,
    out: &mut Batcher,
) -> Result<SourceStats> {
    let (format, comp) = classify(path);
    match format {
        Format::Jsonl => {
            let r = BufReader::with_capacity(1 << 20, open_decoded(path, comp)?);
            jsonl_documents(path, comp, r, field, skip_bad, out)
        }
        Format::Parquet => super::parquet_text::documents(path, comp, field, skip_bad, out),
        Format::Text => text_documents(path, read_bytes(path, comp)?, out),
    }
}

/// All documents of `path` at once (tests and small inputs).
pub fn read_documents(
    path: &Path,
    field: &str,
    skip_bad: bool,
) -> Result<(Vec<String>, SourceStats)> {
    let mut docs = Vec::new();
    let stats = for_each_batch(path, field, skip_bad, usize::MAX, &mut |b| {
        docs.extend(b);
        Ok(())
    })?;
    Ok((docs, stats))
}

/// A reader of the decompressed content of `path`.
fn open_decoded(path: &Path, comp: Compression) -> Result<Box<dyn Read>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("reading input {}", path.display()))?;
    Ok(match comp {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(file)
                .with_context(|| format!("decompressing (zstd) input {}", path.display()))?,
        ),
    })
}

/// What an I/O error while reading `path` means.
pub fn read_error(path: &Path, comp: Compression) -> String {
    let what = match comp {
        Compression::None => "reading",
        Compression::Gzip => "decompressing (gzip)",
        Compression::Zstd => "decompressing (zstd)",
    };
    format!("{what} input {}", path.display())
}

/// The whole (decompressed) content of `path`.
pub fn read_bytes(path: &Path, comp: Compression) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_decoded(path, comp)?
        .read_to_end(&mut out)
        .with_context(|| read_error(path, comp))?;
    Ok(out)
}

fn text_documents(path: &Path, bytes: Vec<u8>, out: &mut Batcher) -> Result<SourceStats> {
    let skip = |why: String| {
        log::warn!("skipping {}: {why}", path.display());
        Ok(SourceStats {
            skipped_rows: 0,
            skipped_file: Some(why),
        })
    };
    if bytes.contains(&0) {
        return skip("contains NUL bytes (binary?)".into());
    }
    match String::from_utf8(bytes) {
        Ok(text) => {
            for doc in split_documents(&text) {
                out.push(doc)?;
            }
            Ok(SourceStats::default())
        }
        Err(e) => skip(format!("not valid UTF-8 ({e})")),
    }
}

fn jsonl_documents(
    path: &Path,
    comp: Compression,
    mut r: impl BufRead,
    field: &str,
    skip_bad: bool,
    out: &mut Batcher,
) -> Result<SourceStats> {
    let mut stats = SourceStats::default();
    let mut line = Vec::new();
    for i in 1.. {
        line.clear();
        if r.read_until(b'\n', &mut line)
            .with_context(|| read_error(path, comp))?
            == 0
        {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match json_text(&line, field) {
            Ok(doc) => out.push(&doc)?,
            Err(e) if skip_bad => {
                log::debug!("{}:{i}: skipped: {e}", path.display());
                stats.skipped_rows += 1;
            }
            Err(e) => bail!("{}:{i}: {e} (--skip-bad skips such lines)", path.display()),
        }
    }
    Ok(stats)
}

/// Field `field` of one JSONL line, as a string.
fn json_text(line: &[u8], field: &str) -> Result<String> {
    let text = std::str::from_utf8(line).context("not valid UTF-8")?;
    let v: serde_json::Value = serde_json::from_str(text).context("malformed JSON")?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!(
            "field {field:?} is {}, not a string",
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            }
        ),
        None if v.is_object() => bail!("no field {field:?}"),
        None => bail!("not a JSON object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferrotron-src-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn names_give_format_and_compression() {
        let c = |n: &str| classify(Path::new(n));
        assert_eq!(c("a.jsonl"), (Format::Jsonl, Compression::None));
        assert_eq!(c("a.JSONL.gz"), (Format::Jsonl, Compression::Gzip));
        assert_eq!(c("a.ndjson.zst"), (Format::Jsonl, Compression::Zstd));
        assert_eq!(c("fortunes"), (Format::Text, Compression::None));
        assert_eq!(c("b.txt.gz"), (Format::Text, Compression::Gzip));
    }

    #[test]
    fn jsonl_plain_gzip_and_zstd_give_the_same_documents() {
        let d = dir("fmt");
        let body = "{\"text\": \" first doc \", \"id\": 1}\n\n{\"text\": \"second\\ndoc\"}\n{\"text\": \"   \"}\n";
        std::fs::write(d.join("a.jsonl"), body).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.as_bytes()).unwrap();
        std::fs::write(d.join("a.jsonl.gz"), gz.finish().unwrap()).unwrap();
        let zst = zstd::encode_all(body.as_bytes(), 1).unwrap();
        std::fs::write(d.join("a.jsonl.zst"), zst).unwrap();
        for f in ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst"] {
            let (got, _) = read_documents(&d.join(f), "text", false).unwrap();
            assert_eq!(got, ["first doc", "second\ndoc"], "{f}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_lines_are_named_or_skipped() {
        let d = dir("bad");
        let cases: [(&[u8], &str); 5] = [
            (
                b"{\"text\": \"ok\"}\n{\"text\": \"x\"",
                "a.jsonl:2: malformed JSON",
            ),
            (b"{\"body\": \"x\"}\n", "a.jsonl:1: no field \"text\""),
            (
                b"{\"text\": 3}\n",
                "a.jsonl:1: field \"text\" is a number, not a string",
            ),
            (b"[1, 2]\n", "a.jsonl:1: not a JSON object"),
            (b"{\"text\": \"a\xff\"}\n", "a.jsonl:1: not valid UTF-8"),
        ];
        for (body, want) in cases {
            let p = d.join("a.jsonl");
            std::fs::write(&p, body).unwrap();
            let e = format!("{:#}", read_documents(&p, "text", false).unwrap_err());
            assert!(e.contains(want), "{e}");
            let (_, stats) = read_documents(&p, "text", true).unwrap();
            assert_eq!(stats.skipped_rows, 1, "{want}");
        }
        let p = d.join("t.txt.gz");
        std::fs::write(&p, b"not gzip at all").unwrap();
        let e = format!("{:#}", read_documents(&p, "text", false).unwrap_err());
        assert!(
            e.contains("decompressing (gzip)") && e.contains("t.txt.gz"),
            "{e}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
