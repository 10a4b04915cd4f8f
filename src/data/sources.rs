//! Input formats of `prepare-data`, told apart by file name:
//!
//! * `*.jsonl` / `*.ndjson`: one JSON object per line; the document is the string in field
//!   `field` (default `text`). Blank lines are skipped. A line that is not JSON, lacks the
//!   field, has a non-string field or is not UTF-8 is an error naming the file and line (or,
//!   with `skip_bad`, skipped and counted).
//! * anything else: plain text, documents separated by lines holding only `%` (fortune
//!   format); a file without such lines is one document. Binary (NUL bytes) or non-UTF-8 text
//!   files are skipped with a warning, as a folder of text may hold such files.
//!
//! Either may be compressed: `*.gz` (gzip) or `*.zst` (zstd), e.g. `shard-00.jsonl.zst`.
//! Every format yields documents trimmed of surrounding whitespace, empty ones dropped.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::prepare::split_documents;

/// How a file's documents are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
}

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
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
    } else {
        Format::Text
    };
    (format, comp)
}

/// The documents of one input file, and how many bad JSONL lines were skipped.
#[derive(Debug, Default)]
pub struct FileDocs {
    pub docs: Vec<String>,
    pub skipped_lines: usize,
}

/// Reads the documents of `path` (see the module docs). `Ok(None)`: a plain-text file skipped
/// as binary or non-UTF-8 (with a warning).
pub fn read_documents(path: &Path, field: &str, skip_bad: bool) -> Result<Option<FileDocs>> {
    let (format, comp) = classify(path);
    let bytes = read_bytes(path, comp)?;
    match format {
        Format::Jsonl => jsonl_documents(path, &bytes, field, skip_bad).map(Some),
        Format::Text => Ok(text_documents(path, bytes)),
    }
}

/// The whole (decompressed) content of `path`.
fn read_bytes(path: &Path, comp: Compression) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("reading input {}", path.display()))?;
    let mut out = Vec::new();
    let res = match comp {
        Compression::None => std::io::BufReader::new(file).read_to_end(&mut out),
        Compression::Gzip => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut out),
        Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(file)
            .map_err(std::io::Error::other)
            .and_then(|mut d| d.read_to_end(&mut out)),
    };
    let what = match comp {
        Compression::None => "reading",
        Compression::Gzip => "decompressing (gzip)",
        Compression::Zstd => "decompressing (zstd)",
    };
    res.with_context(|| format!("{what} input {}", path.display()))?;
    Ok(out)
}

fn text_documents(path: &Path, bytes: Vec<u8>) -> Option<FileDocs> {
    if bytes.contains(&0) {
        log::warn!("skipping {}: contains NUL bytes (binary?)", path.display());
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(text) => Some(FileDocs {
            docs: split_documents(&text)
                .into_iter()
                .map(String::from)
                .collect(),
            skipped_lines: 0,
        }),
        Err(e) => {
            log::warn!("skipping {}: not valid UTF-8 ({e})", path.display());
            None
        }
    }
}

fn jsonl_documents(path: &Path, bytes: &[u8], field: &str, skip_bad: bool) -> Result<FileDocs> {
    let mut out = FileDocs::default();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match json_text(line, field) {
            Ok(doc) => {
                let doc = doc.trim();
                if !doc.is_empty() {
                    out.docs.push(doc.to_string());
                }
            }
            Err(e) if skip_bad => {
                log::debug!("{}:{}: skipped: {e}", path.display(), i + 1);
                out.skipped_lines += 1;
            }
            Err(e) => bail!(
                "{}:{}: {e} (--skip-bad skips such lines)",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
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
        let zst = ruzstd::encoding::compress_to_vec(
            body.as_bytes(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        std::fs::write(d.join("a.jsonl.zst"), zst).unwrap();
        for f in ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst"] {
            let got = read_documents(&d.join(f), "text", false).unwrap().unwrap();
            assert_eq!(got.docs, ["first doc", "second\ndoc"], "{f}");
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
            let got = read_documents(&p, "text", true).unwrap().unwrap();
            assert_eq!(got.skipped_lines, 1, "{want}");
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
