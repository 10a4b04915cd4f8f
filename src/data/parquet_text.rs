//! Documents from a Parquet file: the values of one top-level string column, in row order.
//!
//! The column named `field` must be a plain (not nested, not repeated) `BYTE_ARRAY` column,
//! annotated as a string (`STRING`/`UTF8`) or not annotated (then each value must be UTF-8).
//! It is read row group by row group through the `parquet` crate's column reader, so only
//! that column's pages are decompressed (snappy, gzip, zstd, lz4) and memory is bounded by
//! one row group's column chunk. Rows are numbered from 0 over the whole file, as pyarrow and
//! pandas number them. A null or non-UTF-8 value is an error naming the file and row, or
//! with `skip_bad` skipped and counted; a file that is not Parquet, truncated or corrupt is
//! an error naming the file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::schema::types::SchemaDescriptor;

use super::sources::{read_bytes, Batcher, Compression, SourceStats};

/// Rows decoded per call to the column reader.
const ROWS_PER_READ: usize = 1024;

/// Hands the documents of the Parquet file `path` to `out` (see the module docs).
pub fn documents(
    path: &Path,
    comp: Compression,
    field: &str,
    skip_bad: bool,
    out: &mut Batcher,
) -> Result<SourceStats> {
    match comp {
        Compression::None => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("reading input {}", path.display()))?;
            read_column(path, file, field, skip_bad, out)
        }
        _ => {
            let bytes = bytes::Bytes::from(read_bytes(path, comp)?);
            read_column(path, bytes, field, skip_bad, out)
        }
    }
}

fn read_column<R: ChunkReader + 'static>(
    path: &Path,
    input: R,
    field: &str,
    skip_bad: bool,
    out: &mut Batcher,
) -> Result<SourceStats> {
    let bad_file = || format!("{}: not a readable Parquet file", path.display());
    let reader = SerializedFileReader::new(input).with_context(bad_file)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let col = text_column(schema, field).with_context(|| path.display().to_string())?;
    let max_def = schema.column(col).max_def_level();
    let mut stats = SourceStats::default();
    let (mut defs, mut values) = (Vec::new(), Vec::new());
    let mut row = 0usize;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).with_context(bad_file)?;
        // text_column checked the physical type, so this conversion cannot fail.
        let ColumnReader::ByteArrayColumnReader(mut cr) =
            group.get_column_reader(col).with_context(bad_file)?
        else {
            bail!(
                "{}: column {field:?} is not a byte-array column",
                path.display()
            );
        };
        loop {
            defs.clear();
            values.clear();
            let (records, _, _) = cr
                .read_records(ROWS_PER_READ, Some(&mut defs), None, &mut values)
                .with_context(|| format!("{}: row group {g}: corrupt data", path.display()))?;
            if records == 0 {
                break;
            }
            let mut next = values.iter();
            for r in 0..records {
                // With definition levels, a level below the maximum is a null.
                let null = max_def > 0 && defs.get(r).is_some_and(|&d| d < max_def);
                let value = if null { None } else { next.next() };
                if let Err(e) = push_value(value, field, out) {
                    if !skip_bad {
                        bail!(
                            "{}: row {}: {e:#} (--skip-bad skips such rows)",
                            path.display(),
                            row + r
                        );
                    }
                    log::debug!("{}: row {}: skipped: {e:#}", path.display(), row + r);
                    stats.skipped_rows += 1;
                }
            }
            row += records;
        }
    }
    Ok(stats)
}

/// One value as a document: an error for a null or a non-UTF-8 value.
fn push_value(value: Option<&ByteArray>, field: &str, out: &mut Batcher) -> Result<()> {
    let Some(v) = value else {
        bail!("field {field:?} is null");
    };
    let text = std::str::from_utf8(v.data()).context("not valid UTF-8")?;
    out.push(text)
}

/// Index of the leaf column holding the documents: a top-level, non-repeated byte-array column
/// named `field`, annotated as a string or not annotated.
fn text_column(schema: &SchemaDescriptor, field: &str) -> Result<usize> {
    let mut nested = false;
    for i in 0..schema.num_columns() {
        let c = schema.column(i);
        let parts = c.path().parts();
        if parts.first().map(String::as_str) != Some(field) {
            continue;
        }
        if parts.len() > 1 || c.max_rep_level() > 0 {
            nested = true;
            continue;
        }
        let is_string = matches!(c.logical_type_ref(), Some(LogicalType::String))
            || c.converted_type() == ConvertedType::UTF8
            || (c.logical_type_ref().is_none() && c.converted_type() == ConvertedType::NONE);
        if c.physical_type() != PhysicalType::BYTE_ARRAY || !is_string {
            let ty = match c.logical_type_ref() {
                Some(l) => format!("{l:?}"),
                None => format!("{}", c.physical_type()),
            };
            bail!("column {field:?} holds {ty}, not strings");
        }
        return Ok(i);
    }
    if nested {
        bail!("column {field:?} is nested (a list or struct), not a plain string column");
    }
    let names: Vec<String> = (0..schema.num_columns())
        .map(|i| schema.column(i).path().string())
        .collect();
    bail!("no column {field:?} (columns: {})", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::sources::read_documents;
    use std::path::{Path, PathBuf};

    /// Fixtures written by pyarrow (`tests/reference/make_parquet_fixtures.py`).
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/reference/fixtures/parquet")
            .join(name)
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrotron-pq-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn err(path: &Path, field: &str) -> String {
        format!("{:#}", read_documents(path, field, false).unwrap_err())
    }

    #[test]
    fn every_codec_gives_the_documents_of_the_text_file() {
        let (want, _) = read_documents(&fixture("docs.txt"), "text", false).unwrap();
        assert_eq!(want.len(), 303);
        let (jsonl, _) = read_documents(&fixture("docs.jsonl"), "text", false).unwrap();
        assert_eq!(jsonl, want);
        for f in ["snappy", "zstd", "gzip", "plain"] {
            let (got, stats) =
                read_documents(&fixture(&format!("{f}.parquet")), "text", false).unwrap();
            assert_eq!(got, want, "{f}.parquet");
            assert_eq!(stats.skipped_rows, 0);
        }
        // A whole Parquet file compressed again (read into memory first).
        let d = scratch("gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &std::fs::read(fixture("snappy.parquet")).unwrap())
            .unwrap();
        std::fs::write(d.join("x.parquet.gz"), gz.finish().unwrap()).unwrap();
        let (got, _) = read_documents(&d.join("x.parquet.gz"), "text", false).unwrap();
        assert_eq!(got, want);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_values_name_the_file_and_row_or_are_skipped() {
        let e = err(&fixture("nulls.parquet"), "text");
        assert!(
            e.contains("nulls.parquet: row 3: field \"text\" is null"),
            "{e}"
        );
        let (docs, stats) = read_documents(&fixture("nulls.parquet"), "text", true).unwrap();
        assert_eq!((docs.len(), stats.skipped_rows), (8, 2));
        let e = err(&fixture("binary.parquet"), "text");
        assert!(e.contains("binary.parquet: row 1: not valid UTF-8"), "{e}");
        let (docs, _) = read_documents(&fixture("binary.parquet"), "text", true).unwrap();
        assert_eq!(docs, ["fine", "also fine"]);
    }

    #[test]
    fn wrong_columns_are_named() {
        let e = err(&fixture("int_text.parquet"), "text");
        assert!(
            e.contains("int_text.parquet")
                && e.contains("column \"text\" holds")
                && e.contains("not strings"),
            "{e}"
        );
        let e = err(&fixture("nested.parquet"), "text");
        assert!(
            e.contains("nested.parquet") && e.contains("is nested"),
            "{e}"
        );
        let e = err(&fixture("snappy.parquet"), "body");
        assert!(e.contains("no column \"body\" (columns: id, text)"), "{e}");
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors_naming_the_file() {
        let d = scratch("bad");
        let good = std::fs::read(fixture("snappy.parquet")).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated.parquet", good[..good.len() / 2].to_vec()),
            ("empty.parquet", Vec::new()),
            ("notparquet.parquet", b"just some text, no magic".to_vec()),
            ("footer.parquet", {
                let mut b = good.clone();
                let n = b.len();
                for x in &mut b[n - 200..n - 8] {
                    *x = 0xAB;
                }
                b
            }),
            ("pages.parquet", {
                let mut b = good.clone();
                for x in &mut b[4..4000] {
                    *x = x.wrapping_mul(31).wrapping_add(7);
                }
                b
            }),
        ];
        for (name, bytes) in cases {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = err(&p, "text");
            assert!(e.contains(name), "{name}: {e}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
