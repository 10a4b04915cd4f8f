//! Pass 2 of `prepare-data`: cut the two splits' token streams into fixed-size shards.
//!
//! From the units' metas alone ([`UnitMeta`]) every rank computes the same [`Layout`]: the
//! global index of each unit's first document, and where each unit's train and validation
//! tokens start in their split's stream. Shard `j` of a split holds stream positions
//! `[j·S, min((j+1)·S, N))` (`S = shard_tokens`; an empty split still gets one empty shard),
//! so any rank can write any shard by reading the units' token files for that range. Shards
//! are numbered train first, then validation; rank `r` of `n` writes those with number
//! `≡ r (mod n)`. A shard's marker in the work folder (holding the layout's hash) lets a
//! resumed run skip it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use super::tokenize::{unit_files, UnitMeta};
use crate::data::manifest::Split;
use crate::data::shard::write_shard;

/// Where every input's documents and tokens go.
#[derive(Debug, Clone)]
pub struct Layout {
    pub val_every: u64,
    pub shard_tokens: u64,
    /// Global index of each unit's first document (over all inputs, in input order).
    pub doc_start: Vec<u64>,
    /// Index of each unit's first input (names its work files).
    pub first_input: Vec<usize>,
    pub train: SplitLayout,
    pub val: SplitLayout,
    /// Hash of everything that decides the shards' bytes.
    pub hash: String,
}

/// One split's stream: unit `k` holds positions `start[k] .. start[k + 1]`.
#[derive(Debug, Clone, Default)]
pub struct SplitLayout {
    pub start: Vec<u64>,
    pub documents: u64,
}

impl SplitLayout {
    pub fn tokens(&self) -> u64 {
        self.start.last().copied().unwrap_or(0)
    }

    /// Number of shard files (at least one).
    pub fn shards(&self, shard_tokens: u64) -> usize {
        (self.tokens().div_ceil(shard_tokens) as usize).max(1)
    }
}

impl Layout {
    pub fn new(metas: &[UnitMeta], val_every: usize, shard_tokens: usize) -> Self {
        let v = val_every as u64;
        let mut doc_start = Vec::with_capacity(metas.len());
        let (mut train, mut val) = (SplitLayout::default(), SplitLayout::default());
        train.start.push(0);
        val.start.push(0);
        let mut g = 0u64;
        for m in metas {
            doc_start.push(g);
            // Local index of the first validation document, and how many there are.
            let first = (v - g % v) % v;
            let val_docs = if first < m.documents {
                (m.documents - 1 - first) / v + 1
            } else {
                0
            };
            let val_tokens = m.residue_tokens.get(first as usize).copied().unwrap_or(0);
            val.start.push(val.tokens() + val_tokens);
            train.start.push(train.tokens() + m.tokens - val_tokens);
            val.documents += val_docs;
            train.documents += m.documents - val_docs;
            g += m.documents;
        }
        let hash = fnv_hex(&format!(
            "{}|{val_every}|{shard_tokens}",
            serde_json::to_string(metas).unwrap_or_default()
        ));
        Self {
            val_every: v,
            shard_tokens: shard_tokens as u64,
            doc_start,
            first_input: metas.iter().map(|m| m.first).collect(),
            train,
            val,
            hash,
        }
    }

    pub fn split(&self, s: Split) -> &SplitLayout {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// All shards: (split, index within the split), train first.
    pub fn shard_list(&self) -> Vec<(Split, usize)> {
        [Split::Train, Split::Val]
            .into_iter()
            .flat_map(|s| (0..self.split(s).shards(self.shard_tokens)).map(move |j| (s, j)))
            .collect()
    }

    /// Stream positions `[a, b)` of shard `j` of split `s`.
    pub fn shard_range(&self, s: Split, j: usize) -> (u64, u64) {
        let a = j as u64 * self.shard_tokens;
        (a, (a + self.shard_tokens).min(self.split(s).tokens()))
    }
}

/// File name of shard `j` of split `s`.
pub fn shard_name(s: Split, j: usize) -> String {
    format!("{}_{j:06}.bin", s.prefix())
}

/// Writes shard `j` of split `s` into `out` unless its marker says a previous run with the same
/// layout wrote it. Returns whether it was written.
pub fn write_one(work: &Path, out: &Path, layout: &Layout, s: Split, j: usize) -> Result<bool> {
    let path = out.join(shard_name(s, j));
    let marker = work.join(format!("{}.done", shard_name(s, j)));
    let (a, b) = layout.shard_range(s, j);
    if fs::read_to_string(&marker).ok().as_deref() == Some(layout.hash.as_str())
        && crate::data::shard::read_header_tokens(&path).ok() == Some((b - a) as usize)
    {
        return Ok(false);
    }
    let tokens = gather(work, layout, s, a, b)?;
    write_shard(&path, &tokens)?;
    fs::write(&marker, &layout.hash).with_context(|| format!("writing {}", marker.display()))?;
    Ok(true)
}

/// Tokens at positions `[a, b)` of split `s`'s stream, read from the units' token files.
fn gather(work: &Path, layout: &Layout, s: Split, a: u64, b: u64) -> Result<Vec<u16>> {
    let starts = &layout.split(s).start;
    let mut out = Vec::with_capacity((b - a) as usize);
    // First unit whose range ends after a.
    let mut k = starts.partition_point(|&x| x <= a).saturating_sub(1);
    while out.len() < (b - a) as usize && k + 1 < starts.len() {
        if starts[k + 1] > starts[k] {
            copy_from_unit(work, layout, s, k, a.max(starts[k]), b, &mut out)?;
        }
        k += 1;
    }
    ensure!(
        out.len() == (b - a) as usize,
        "internal: gathered {} of {} tokens for {} shard at {a}",
        out.len(),
        b - a,
        s.prefix()
    );
    Ok(out)
}

/// Appends the tokens of unit `k` at split positions `[from, to)` (clipped to the unit).
fn copy_from_unit(
    work: &Path,
    layout: &Layout,
    s: Split,
    k: usize,
    from: u64,
    to: u64,
    out: &mut Vec<u16>,
) -> Result<()> {
    let (tok_path, len_path, _) = unit_files(work, layout.first_input[k]);
    let lens = read_u64s(&len_path)?;
    let file =
        fs::File::open(&tok_path).with_context(|| format!("opening {}", tok_path.display()))?;
    // SAFETY: read-only mapping of a work file this run finished writing (renamed into place).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", tok_path.display()))?;
    let want_val = s == Split::Val;
    let g0 = layout.doc_start[k];
    let mut pos = layout.split(s).start[k]; // split position of the next in-split document
    let mut off = 0u64; // token offset of the current document in the unit's token file
    for (i, &len) in lens.iter().enumerate() {
        if pos >= to {
            break;
        }
        let is_val = (g0 + i as u64).is_multiple_of(layout.val_every);
        if is_val == want_val {
            let (lo, hi) = (from.max(pos), to.min(pos + len));
            if lo < hi {
                let (x, y) = ((off + lo - pos) as usize * 2, (off + hi - pos) as usize * 2);
                ensure!(
                    y <= map.len(),
                    "{} is shorter than its meta says",
                    tok_path.display()
                );
                out.extend(
                    map[x..y]
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]])),
                );
            }
            pos += len;
        }
        off += len;
    }
    Ok(())
}

fn read_u64s(path: &Path) -> Result<Vec<u64>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

/// FNV-1a 64-bit hash as 16 hex digits (identifies layouts and inputs; not cryptographic).
pub fn fnv_hex(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Paths of all shards of the layout, train first.
pub fn shard_paths(out: &Path, layout: &Layout) -> Vec<PathBuf> {
    layout
        .shard_list()
        .into_iter()
        .map(|(s, j)| out.join(shard_name(s, j)))
        .collect()
}
