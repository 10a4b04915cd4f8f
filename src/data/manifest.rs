//! `manifest.json`: what `prepare-data` wrote into a folder of shards — the shards of each
//! split with their token counts, the sources they came from, the tokenizer and the rules used.
//! `train` and `eval` take a manifest (or a folder holding one) wherever they take shards.
//!
//! The file is byte-identical for any number of ranks and threads that made it. Shard file
//! names are relative to the manifest's folder, so the folder can be moved or copied.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// File name of the manifest inside an output folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// `format` of a manifest.
pub const MANIFEST_FORMAT: &str = "ferrotron-token-shards";
/// `version` of the manifest layout written by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// A split of a prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// File-name prefix of the split's shards (`train_000000.bin`).
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// The options a dataset was prepared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestOptions {
    pub val_every: usize,
    pub shard_tokens: usize,
    pub field: String,
    pub skip_bad: bool,
}

/// One shard file of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name, relative to the manifest's folder.
    pub file: String,
    pub tokens: u64,
}

/// One split: its documents, tokens and shard files in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    pub documents: u64,
    pub tokens: u64,
    pub shards: Vec<ShardEntry>,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// The path as found from the `--input` arguments.
    pub path: String,
    pub format: String,
    pub compression: String,
    pub bytes: u64,
    pub documents: u64,
    /// Tokens of its documents (end-of-text prefixes included).
    pub tokens: u64,
    /// Bad lines or rows skipped (`--skip-bad`).
    pub skipped_rows: u64,
    /// Why the whole file was skipped, if it was.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skipped_file: Option<String>,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub eot: u32,
    /// How documents are delimited in the token stream.
    pub eot_policy: String,
    /// Which documents go to the validation split.
    pub val_rule: String,
    pub options: ManifestOptions,
    /// Hash of the inputs (paths, sizes, modification times) and options: a run with the same
    /// fingerprint finds the folder up to date.
    pub fingerprint: String,
    pub train: SplitEntry,
    pub val: SplitEntry,
    pub sources: Vec<SourceEntry>,
}

impl Manifest {
    /// Read and check a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("parsing manifest {}", path.display()))?;
        ensure!(
            m.format == MANIFEST_FORMAT,
            "{}: format {:?} is not {MANIFEST_FORMAT:?}",
            path.display(),
            m.format
        );
        if m.version != MANIFEST_VERSION {
            bail!(
                "{}: manifest version {} is not supported by this build (version {MANIFEST_VERSION}); \
                 re-run prepare-data",
                path.display(),
                m.version
            );
        }
        Ok(m)
    }

    /// The split's entry.
    pub fn split(&self, split: Split) -> &SplitEntry {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// The split's shard files (joined to `dir`, the manifest's folder), each checked to exist
    /// and to hold the number of tokens the manifest lists.
    pub fn shard_paths(&self, dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
        let entry = self.split(split);
        ensure!(
            !entry.shards.is_empty(),
            "manifest in {} lists no {} shards",
            dir.display(),
            split.prefix()
        );
        entry
            .shards
            .iter()
            .map(|s| {
                let p = dir.join(&s.file);
                let n = super::shard::read_header_tokens(&p)?;
                ensure!(
                    n as u64 == s.tokens,
                    "{}: holds {n} tokens but {} lists {} (re-run prepare-data)",
                    p.display(),
                    dir.join(MANIFEST_FILE).display(),
                    s.tokens
                );
                Ok(p)
            })
            .collect()
    }

    /// Write atomically (temporary file, then rename), as pretty JSON with a final newline.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }
}
