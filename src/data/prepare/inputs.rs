//! The input files of `prepare-data`: paths and folders expanded to a sorted list of files, each
//! with the size and modification time that identify it for a resumed run.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

/// One input file and what identifies its content for a resumed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 when unknown).
    pub mtime_ns: u64,
}

/// All input files, sorted by path and deduplicated. Inside folders (recursed), hidden entries
/// and `.dat`/`.u8` files (the binary indexes of Debian's `fortunes`) are skipped; files named
/// explicitly are always taken.
pub fn collect_input_files(inputs: &[PathBuf]) -> Result<Vec<InputFile>> {
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
    files
        .into_iter()
        .map(|path| {
            let m = fs::metadata(&path)
                .with_context(|| format!("reading the size of input {}", path.display()))?;
            let mtime_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            Ok(InputFile {
                path,
                bytes: m.len(),
                mtime_ns,
            })
        })
        .collect()
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

/// `a, b, c` for error messages.
pub fn display_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}
