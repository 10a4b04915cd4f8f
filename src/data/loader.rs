//! Token data, memory-mapped, plus deterministic, resumable sampling.
//!
//! [`TokenData`] is the concatenation of a split's shards (in the order
//! given) as one virtual `u16` stream of N tokens: each shard is
//! memory-mapped ([`MappedShard`]) and a table of offsets maps a position of
//! the stream to a shard, so nothing is copied or read at start-up and a rank
//! touches only the windows it trains on (through the page cache, which the
//! ranks of a node share). A token id is checked against the vocabulary when
//! its window is read, so an out-of-vocabulary id never reaches the model.
//! Two views cut the stream into windows of `T = seq_len` tokens:
//!
//! * [`TrainSampler`]: `n = (N - 1) / T` non-overlapping windows; window `w`
//!   has inputs `tokens[w*T .. w*T + T]` and targets `tokens[w*T + 1 .. w*T + T + 1]`
//!   (a window may span two or more shards).
//!   A global sample index `g` maps to epoch `e = g / n` and window
//!   `perm_e[g % n]`, where `perm_e` is a random permutation of `0..n`: by default a keyed
//!   Feistel bijection evaluated per index (O(1) memory, [`feistel_index`]); with
//!   [`SamplerKind::Shuffle`], the Fisher–Yates permutation runs used before samplers were
//!   versioned ([`epoch_permutation`], 4 bytes per window). Samples depend only on
//!   `(data, T, seed, sampler, g)`, so any data-parallel layout that assigns global indices
//!   consistently sees the same global batch, and resuming at `g` reproduces the run.
//! * [`EvalWindows`]: llm.c-style evaluation: sequence `i` is the window
//!   `i` above, taken in order.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;

use super::manifest::{Manifest, Split, MANIFEST_FILE};
use super::shard::MappedShard;

/// Odd 64-bit constant (2^64 / golden ratio) used to derive per-epoch seeds.
pub const EPOCH_SEED_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// One piece of the stream: a mapped shard, or tokens in memory (tests, tools).
#[derive(Debug)]
enum Piece {
    Mapped(MappedShard),
    Owned(Vec<u16>),
}

impl Piece {
    fn tokens(&self) -> &[u16] {
        match self {
            Piece::Mapped(m) => m.tokens(),
            Piece::Owned(v) => v,
        }
    }

    fn name(&self) -> String {
        match self {
            Piece::Mapped(m) => m.path.display().to_string(),
            Piece::Owned(_) => "the in-memory tokens".into(),
        }
    }
}

/// All tokens of a split: its shards concatenated in order, as a virtual stream.
#[derive(Debug)]
pub struct TokenData {
    pieces: Vec<Piece>,
    /// `starts[k]` = stream position of piece k's first token; `starts[len]` = N.
    starts: Vec<usize>,
    /// Token ids must be below this (checked as windows are read).
    vocab_size: usize,
}

impl TokenData {
    /// Map the shards in `paths` (in that order): each header is checked against its file's
    /// length, no token is read. Token ids are checked against `vocab_size` when a window is
    /// read. Errors name the offending file.
    pub fn open(paths: &[PathBuf], vocab_size: usize) -> Result<Self> {
        ensure!(!paths.is_empty(), "no token shard files given");
        let shards: Vec<MappedShard> = paths
            .par_iter()
            .map(|p| MappedShard::open(p))
            .collect::<Result<_>>()?;
        let d = Self::from_pieces(shards.into_iter().map(Piece::Mapped).collect(), vocab_size);
        log::info!(
            "mapped {} tokens from {} shard file(s) starting with {}",
            d.len(),
            paths.len(),
            paths[0].display()
        );
        Ok(d)
    }

    /// Wrap tokens already in memory (no files, no vocabulary limit; tests and tools).
    pub fn from_tokens(tokens: Vec<u16>) -> Self {
        Self::from_pieces(vec![Piece::Owned(tokens)], usize::MAX)
    }

    fn from_pieces(pieces: Vec<Piece>, vocab_size: usize) -> Self {
        let mut starts = Vec::with_capacity(pieces.len() + 1);
        let mut at = 0;
        for p in &pieces {
            starts.push(at);
            at += p.tokens().len();
        }
        starts.push(at);
        Self {
            pieces,
            starts,
            vocab_size,
        }
    }

    /// Resolve a shard pattern to the files of `split`:
    ///
    /// * a `manifest.json` written by `prepare-data` (any `*.json` file), or a folder holding
    ///   one — the split's shards listed there, each checked to exist with the token count
    ///   listed;
    /// * `dir/prefix*suffix` — `*` (any run of characters, possibly several)
    ///   and `?` (one character) are allowed in the file-name part only,
    ///   e.g. `data/fortunes/train_*.bin`;
    /// * a folder without a manifest — its `train_*.bin` or `val_*.bin` files (by `split`) if it
    ///   has any, else every non-hidden `*.bin` file directly inside it;
    /// * a file — just that file.
    ///
    /// Errors naming the pattern if nothing matches.
    pub fn from_pattern(pattern: &str, split: Split) -> Result<Vec<PathBuf>> {
        let path = Path::new(pattern);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let expanding = || format!("expanding shard pattern {pattern}");
        let files = if name.contains(['*', '?']) {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            ensure!(
                !parent.to_string_lossy().contains(['*', '?']),
                "shard pattern {pattern}: wildcards are only supported in the file name"
            );
            list_matching(parent, |n| glob_match(name, n)).with_context(expanding)?
        } else if path.is_dir() && path.join(MANIFEST_FILE).is_file() {
            let m = path.join(MANIFEST_FILE);
            Manifest::load(&m)?.shard_paths(path, split)?
        } else if path.is_file() && name.ends_with(".json") {
            let dir = path.parent().unwrap_or(Path::new("."));
            Manifest::load(path)?.shard_paths(dir, split)?
        } else if path.is_dir() {
            let prefix = format!("{}_", split.prefix());
            let of_split = list_matching(path, |n| n.starts_with(&prefix) && n.ends_with(".bin"))
                .with_context(expanding)?;
            if of_split.is_empty() {
                list_matching(path, |n| !n.starts_with('.') && n.ends_with(".bin"))
                    .with_context(expanding)?
            } else {
                of_split
            }
        } else if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
        if files.is_empty() {
            bail!("no token shard files match {pattern}");
        }
        Ok(files)
    }

    /// Number of tokens N.
    pub fn len(&self) -> usize {
        self.starts[self.pieces.len()]
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard files mapped (empty for [`TokenData::from_tokens`]).
    pub fn paths(&self) -> Vec<&Path> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Mapped(m) => Some(m.path.as_path()),
                Piece::Owned(_) => None,
            })
            .collect()
    }

    /// Tokens `start .. start + out.len()` of the stream into `out` (as u32), across shard
    /// boundaries, each checked against the vocabulary. Errors name the file and the token's
    /// position in it.
    pub fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        let end = start + out.len();
        ensure!(
            end <= self.len(),
            "tokens {start}..{end} beyond the data's {} tokens",
            self.len()
        );
        // The last piece starting at or before `start` (empty pieces are skipped below).
        let mut k = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let (mut pos, mut i) = (start, 0);
        while pos < end {
            let toks = self.pieces[k].tokens();
            let off = pos - self.starts[k];
            let take = (end - pos).min(toks.len().saturating_sub(off));
            for (j, &t) in toks[off..off + take].iter().enumerate() {
                if t as usize >= self.vocab_size {
                    bail!(
                        "token id {t} at position {} of {} is >= vocab_size {}",
                        off + j,
                        self.pieces[k].name(),
                        self.vocab_size
                    );
                }
                out[i + j] = u32::from(t);
            }
            pos += take;
            i += take;
            k += 1;
        }
        Ok(())
    }

    /// Number of whole windows `(N - 1) / T`; error if zero.
    fn num_windows(&self, seq_len: usize) -> Result<usize> {
        ensure!(seq_len >= 1, "seq_len must be >= 1");
        let n = self.len().saturating_sub(1) / seq_len;
        if n == 0 {
            bail!(
                "data{} has {} tokens, fewer than seq_len+1 = {}",
                self.describe(),
                self.len(),
                seq_len + 1
            );
        }
        Ok(n)
    }

    fn describe(&self) -> String {
        let paths = self.paths();
        match paths.first() {
            Some(p) if paths.len() == 1 => format!(" ({})", p.display()),
            Some(p) => format!(" ({} and {} more)", p.display(), paths.len() - 1),
            None => String::new(),
        }
    }

    /// Copy the window starting at `start` into `inputs`/`targets` (length T each): T + 1
    /// tokens, targets shifted by one.
    fn copy_window(&self, start: usize, inputs: &mut [u32], targets: &mut [u32]) -> Result<()> {
        let t = inputs.len();
        self.read(start, inputs)?;
        targets[..t - 1].copy_from_slice(&inputs[1..]);
        self.read(start + t, &mut targets[t - 1..])
    }
}

/// Regular files in `dir` whose names satisfy `keep`, sorted by path.
fn list_matching(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries =
        fs::read_dir(dir).with_context(|| format!("listing directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing directory {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if keep(name) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Match `name` against `pattern` where `*` is any (possibly empty) run of
/// characters and `?` exactly one character. Iterative with backtracking to
/// the last `*` (linear-ish, no recursion).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Uniform integer in `0..bound` (`bound >= 1`) by Lemire's multiply-shift
/// with rejection: draw `x = rng.next_u64()`, `m = x * bound` (128-bit);
/// reject while `(m mod 2^64) < (2^64 - bound) mod bound`; return `m >> 64`.
fn uniform_below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(bound);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// The permutation of `0..n` used in epoch `epoch`:
///
/// ```text
/// rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(EPOCH_SEED_MUL))
/// perm = [0, 1, ..., n-1]
/// for i in (1..n).rev():            # Fisher–Yates, from the end
///     j = uniform_below(rng, i + 1) # Lemire, see uniform_below
///     perm.swap(i, j)
/// ```
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(EPOCH_SEED_MUL));
    let mut perm: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = uniform_below(&mut rng, i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// How a [`TrainSampler`] orders the windows of an epoch. Recorded in checkpoints (`sampler`),
/// so a resumed run continues with the order it started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// Fisher–Yates permutation ([`epoch_permutation`]): 4 bytes per window, rebuilt each
    /// epoch. The only order before samplers were versioned: checkpoints without a `sampler`
    /// attribute use it.
    Shuffle,
    /// A keyed bijection of `0..n` ([`feistel_index`]): O(1) memory and start-up for any
    /// number of windows. The default of new runs.
    Feistel,
}

impl SamplerKind {
    /// Name in configs (`data.sampler`) and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Shuffle => "shuffle",
            SamplerKind::Feistel => "feistel",
        }
    }

    /// Parse a name written by [`SamplerKind::name`].
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "shuffle" => Ok(SamplerKind::Shuffle),
            "feistel" => Ok(SamplerKind::Feistel),
            other => bail!("unknown sampler {other:?} (use \"feistel\" or \"shuffle\")"),
        }
    }
}

/// SplitMix64's output function: a fixed bijection of `u64` with good avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rounds of the Feistel network in [`feistel_index`].
const FEISTEL_ROUNDS: u64 = 8;

/// Position `i` (`< n`) of epoch `epoch`'s order under [`SamplerKind::Feistel`]:
///
/// ```text
/// h    = max(1, ceil(log2(n)) / 2 rounded up)   # half width in bits; domain 4^h >= n
/// key  = mix64(seed ^ epoch * EPOCH_SEED_MUL)
/// enc(x): (L, R) = (x >> h, x & (2^h - 1))
///         for r in 0..8: (L, R) = (R, L ^ (mix64(key ^ (r << 56) ^ R) & (2^h - 1)))
///         return L << h | R
/// y = enc(i); while y >= n: y = enc(y)          # cycle-walking: a bijection of 0..n
/// ```
///
/// `enc` is a bijection of `0..4^h` (each round is), and walking its cycles until they
/// re-enter `0..n` restricts it to a bijection of `0..n`; `4^h < 4n`, so fewer than 4 steps
/// are expected.
pub fn feistel_index(i: u64, n: u64, seed: u64, epoch: u64) -> u64 {
    debug_assert!(i < n);
    let bits = 64 - (n.max(2) - 1).leading_zeros() as u64; // ceil(log2(n)), >= 1
    let h = bits.div_ceil(2);
    let mask = (1u64 << h) - 1;
    let key = mix64(seed ^ epoch.wrapping_mul(EPOCH_SEED_MUL));
    let enc = |x: u64| {
        let (mut l, mut r) = (x >> h, x & mask);
        for round in 0..FEISTEL_ROUNDS {
            let f = mix64(key ^ (round << 56) ^ r) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << h) | r
    };
    let mut y = enc(i);
    while y >= n {
        y = enc(y);
    }
    y
}

/// Shuffled training windows addressed by a global sample index (see the
/// module docs). With [`SamplerKind::Shuffle`] it keeps the permutation of the most recent
/// epoch cached.
#[derive(Debug, Clone)]
pub struct TrainSampler {
    data: Arc<TokenData>,
    seq_len: usize,
    seed: u64,
    n: usize,
    kind: SamplerKind,
    /// Shuffle only: the epoch whose permutation `perm` holds.
    epoch: Option<u64>,
    perm: Vec<u32>,
}

impl TrainSampler {
    /// Error if the data has fewer than `seq_len + 1` tokens (or, for [`SamplerKind::Shuffle`],
    /// more than `u32::MAX` windows). Nothing is computed until a sample is asked for.
    pub fn new(data: Arc<TokenData>, seq_len: usize, seed: u64, kind: SamplerKind) -> Result<Self> {
        let n = data.num_windows(seq_len)?;
        ensure!(
            kind != SamplerKind::Shuffle || n <= u32::MAX as usize,
            "{n} windows of {seq_len} tokens exceed the shuffle sampler's u32 limit (use data.sampler = \"feistel\")"
        );
        Ok(Self {
            data,
            seq_len,
            seed,
            n,
            kind,
            epoch: None,
            perm: Vec::new(),
        })
    }

    /// The order this sampler uses.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// Switch to another order (a resumed run takes its checkpoint's).
    pub fn set_kind(&mut self, kind: SamplerKind) {
        if kind != self.kind {
            self.kind = kind;
            self.epoch = None;
            self.perm = Vec::new();
        }
    }

    /// Windows per epoch, `n = (N - 1) / T`.
    pub fn num_windows(&self) -> usize {
        self.n
    }

    /// Sequence length T.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Epoch containing global sample `g`.
    pub fn epoch_of(&self, g: u64) -> u64 {
        g / self.n as u64
    }

    /// Window index (`0..n`) used for global sample `g`.
    pub fn window_of(&mut self, g: u64) -> usize {
        let n = self.n as u64;
        let epoch = g / n;
        match self.kind {
            SamplerKind::Feistel => feistel_index(g % n, n, self.seed, epoch) as usize,
            SamplerKind::Shuffle => {
                if self.epoch != Some(epoch) {
                    self.perm = epoch_permutation(self.n, self.seed, epoch);
                    self.epoch = Some(epoch);
                }
                self.perm[(g % n) as usize] as usize
            }
        }
    }

    /// Fill one sequence for global sample `g`. Panics unless both slices
    /// have length T; errors on a token id outside the vocabulary.
    pub fn fill(&mut self, g: u64, inputs: &mut [u32], targets: &mut [u32]) -> Result<()> {
        assert_eq!(inputs.len(), self.seq_len, "inputs length != seq_len");
        assert_eq!(targets.len(), self.seq_len, "targets length != seq_len");
        let w = self.window_of(g);
        self.data.copy_window(w * self.seq_len, inputs, targets)
    }

    /// Fill `count` sequences for global samples `first .. first + count`,
    /// row-major `[count, T]`. Panics unless both slices have length `count * T`.
    pub fn fill_batch(
        &mut self,
        first: u64,
        count: usize,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<()> {
        let t = self.seq_len;
        assert_eq!(inputs.len(), count * t, "inputs length != count * seq_len");
        assert_eq!(
            targets.len(),
            count * t,
            "targets length != count * seq_len"
        );
        let rows = inputs.chunks_exact_mut(t).zip(targets.chunks_exact_mut(t));
        for (k, (inp, tgt)) in rows.enumerate() {
            self.fill(first + k as u64, inp, tgt)?;
        }
        Ok(())
    }
}

/// Sequential evaluation windows (llm.c validation): sequence `i` has inputs
/// `tokens[i*T .. i*T + T]` and targets shifted by one.
#[derive(Debug, Clone)]
pub struct EvalWindows {
    data: Arc<TokenData>,
    seq_len: usize,
    n: usize,
}

impl EvalWindows {
    /// Error if the data has fewer than `seq_len + 1` tokens.
    pub fn new(data: Arc<TokenData>, seq_len: usize) -> Result<Self> {
        let n = data.num_windows(seq_len)?;
        Ok(Self { data, seq_len, n })
    }

    /// Number of sequences `(N - 1) / T`.
    pub fn num_sequences(&self) -> usize {
        self.n
    }

    /// Sequence length T.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of complete batches of `batch_size` sequences.
    pub fn num_full_batches(&self, batch_size: usize) -> usize {
        self.n.checked_div(batch_size).unwrap_or(0)
    }

    /// Fill sequence `i` (length T each). Panics if `i >= num_sequences()`.
    pub fn sequence(&self, i: usize, inputs: &mut [u32], targets: &mut [u32]) -> Result<()> {
        assert!(
            i < self.n,
            "eval sequence {i} out of range (n = {})",
            self.n
        );
        assert_eq!(inputs.len(), self.seq_len, "inputs length != seq_len");
        assert_eq!(targets.len(), self.seq_len, "targets length != seq_len");
        self.data.copy_window(i * self.seq_len, inputs, targets)
    }

    /// Fill batch `b`: sequences `b*B .. b*B + B`, row-major `[B, T]`.
    /// Panics if `b >= num_full_batches(B)` or the slices are not `B * T` long.
    pub fn batch(
        &self,
        b: usize,
        batch_size: usize,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<()> {
        let t = self.seq_len;
        assert!(
            b < self.num_full_batches(batch_size),
            "eval batch {b} out of range"
        );
        assert_eq!(inputs.len(), batch_size * t, "inputs length != B * seq_len");
        assert_eq!(
            targets.len(),
            batch_size * t,
            "targets length != B * seq_len"
        );
        let rows = inputs.chunks_exact_mut(t).zip(targets.chunks_exact_mut(t));
        for (k, (inp, tgt)) in rows.enumerate() {
            self.sequence(b * batch_size + k, inp, tgt)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::write_shard;

    fn data(n: usize) -> Arc<TokenData> {
        Arc::new(TokenData::from_tokens(
            (0..n as u32).map(|i| i as u16).collect(),
        ))
    }

    fn samples(s: &mut TrainSampler, first: u64, count: usize) -> Vec<u32> {
        let t = s.seq_len();
        let (mut x, mut y) = (vec![0; count * t], vec![0; count * t]);
        s.fill_batch(first, count, &mut x, &mut y).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert_eq!(a + 1, *b); // targets are inputs shifted by one
        }
        x
    }

    const KINDS: [SamplerKind; 2] = [SamplerKind::Shuffle, SamplerKind::Feistel];

    #[test]
    fn deterministic_and_seed_dependent() {
        for kind in KINDS {
            let d = data(10_001);
            let mut a = TrainSampler::new(d.clone(), 10, 42, kind).unwrap();
            let mut b = TrainSampler::new(d.clone(), 10, 42, kind).unwrap();
            let mut c = TrainSampler::new(d.clone(), 10, 43, kind).unwrap();
            assert_eq!(a.num_windows(), 1000);
            let sa = samples(&mut a, 0, 64);
            assert_eq!(sa, samples(&mut b, 0, 64));
            assert_ne!(sa, samples(&mut c, 0, 64));
            // Window starts are multiples of T.
            assert!(sa.chunks(10).all(|r| r[0] % 10 == 0));
        }
    }

    #[test]
    fn each_window_once_per_epoch() {
        for kind in KINDS {
            let mut s = TrainSampler::new(data(1000), 7, 1, kind).unwrap();
            let n = s.num_windows();
            assert_eq!(n, 142);
            let mut perms = Vec::new();
            for e in 0..3u64 {
                let mut seen: Vec<usize> = (0..n as u64)
                    .map(|k| s.window_of(e * n as u64 + k))
                    .collect();
                perms.push(seen.clone());
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
            assert_ne!(perms[0], perms[1]);
            assert_ne!(perms[0], (0..n).collect::<Vec<_>>());
            assert_eq!(s.epoch_of(3 * n as u64 - 1), 2);
        }
    }

    /// The Feistel order is a permutation for any n (cycle-walking included), differs by
    /// seed and epoch, and is not close to the identity.
    #[test]
    fn feistel_is_a_permutation_for_any_size() {
        for n in [1u64, 2, 3, 4, 5, 17, 255, 256, 257, 1000, 4097, 65_537] {
            let p: Vec<u64> = (0..n).map(|i| feistel_index(i, n, 9, 0)).collect();
            let mut sorted = p.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n = {n}");
            if n >= 17 {
                let q: Vec<u64> = (0..n).map(|i| feistel_index(i, n, 9, 1)).collect();
                let r: Vec<u64> = (0..n).map(|i| feistel_index(i, n, 10, 0)).collect();
                assert!(p != q && p != r, "n = {n}");
                let fixed = p
                    .iter()
                    .enumerate()
                    .filter(|(i, &x)| *i as u64 == x)
                    .count();
                assert!(fixed * 10 < n as usize, "n = {n}: {fixed} fixed points");
            }
        }
        // Far beyond the u32 limit of the shuffle sampler: still a bijection locally.
        let n = 10_000_000_000_u64;
        let a: std::collections::HashSet<u64> =
            (0..10_000).map(|i| feistel_index(i, n, 1, 0)).collect();
        assert_eq!(a.len(), 10_000);
        assert!(a.iter().all(|&x| x < n));
    }

    #[test]
    fn resume_matches_continuous_run() {
        for kind in KINDS {
            let d = data(5000);
            let mut cont = TrainSampler::new(d.clone(), 16, 7, kind).unwrap();
            let all = samples(&mut cont, 0, 1000); // crosses several epochs (n = 312)
            let mut resumed = TrainSampler::new(d.clone(), 16, 7, kind).unwrap();
            assert_eq!(samples(&mut resumed, 700, 300), all[700 * 16..].to_vec());
            // Data-parallel layout: rank r of 4 takes rows r, r+4, ... of a batch.
            let mut ranks: Vec<TrainSampler> = (0..4)
                .map(|_| TrainSampler::new(d.clone(), 16, 7, kind).unwrap())
                .collect();
            for (r, s) in ranks.iter_mut().enumerate() {
                for k in (r..40).step_by(4) {
                    let g = 600 + k as u64;
                    assert_eq!(samples(s, g, 1), all[g as usize * 16..][..16].to_vec());
                }
            }
        }
    }

    #[test]
    fn too_little_data() {
        let msg = TrainSampler::new(data(10), 10, 0, SamplerKind::Feistel)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("data has 10 tokens, fewer than seq_len+1 = 11"),
            "{msg}"
        );
        assert!(EvalWindows::new(data(10), 10).is_err());
        assert_eq!(
            TrainSampler::new(data(11), 10, 0, SamplerKind::Feistel)
                .unwrap()
                .num_windows(),
            1
        );
    }

    #[test]
    fn eval_layout() {
        let ev = EvalWindows::new(data(14), 3).unwrap();
        assert_eq!(ev.num_sequences(), 4); // (14 - 1) / 3
        assert_eq!(ev.num_full_batches(2), 2);
        assert_eq!(ev.num_full_batches(3), 1);
        let (mut x, mut y) = (vec![0; 6], vec![0; 6]);
        ev.batch(1, 2, &mut x, &mut y).unwrap();
        assert_eq!(x, vec![6, 7, 8, 9, 10, 11]);
        assert_eq!(y, vec![7, 8, 9, 10, 11, 12]);
        ev.batch(0, 2, &mut x, &mut y).unwrap();
        assert_eq!(x, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn glob() {
        assert!(glob_match("train_*.bin", "train_000000.bin"));
        assert!(!glob_match("train_*.bin", "val_000000.bin"));
        assert!(!glob_match("train_*.bin", "train_000000.bin.tmp"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
    }

    #[test]
    fn open_and_pattern() {
        let dir = std::env::temp_dir().join(format!("ferrotron-loader-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        write_shard(&dir.join("train_000001.bin"), &[3, 4, 5]).unwrap();
        write_shard(&dir.join("train_000000.bin"), &[0, 1, 2]).unwrap();
        write_shard(&dir.join("val_000000.bin"), &[9]).unwrap();
        let pat = format!("{}/train_*.bin", dir.display());
        let files = TokenData::from_pattern(&pat, Split::Val).unwrap();
        assert_eq!(
            files,
            vec![dir.join("train_000000.bin"), dir.join("train_000001.bin")]
        );
        let d = TokenData::open(&files, 50257).unwrap();
        let mut all6 = [0u32; 6];
        d.read(0, &mut all6).unwrap();
        assert_eq!(all6, [0, 1, 2, 3, 4, 5]);
        // A folder gives the split's shards; without any, every *.bin file.
        let folder = dir.to_str().unwrap();
        assert_eq!(
            TokenData::from_pattern(folder, Split::Train).unwrap(),
            files
        );
        assert_eq!(
            TokenData::from_pattern(folder, Split::Val).unwrap(),
            vec![dir.join("val_000000.bin")]
        );
        let other = dir.join("other");
        fs::create_dir_all(&other).unwrap();
        write_shard(&other.join("a.bin"), &[1]).unwrap();
        write_shard(&other.join("b.bin"), &[2]).unwrap();
        let any = TokenData::from_pattern(other.to_str().unwrap(), Split::Val).unwrap();
        assert_eq!(any.len(), 2);
        let one = format!("{}/val_000000.bin", dir.display());
        assert_eq!(
            TokenData::from_pattern(&one, Split::Train).unwrap().len(),
            1
        );
        let none = format!("{}/test_*.bin", dir.display());
        let msg = TokenData::from_pattern(&none, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("test_*.bin"), "{msg}");
        // Token ids are checked as windows are read: 0..=3 pass, 4 (position 1 of the second
        // file) is refused with its file and position.
        let d = TokenData::open(&files, 4).unwrap();
        let mut w = [0u32; 4];
        d.read(0, &mut w).unwrap();
        let msg = format!("{:#}", d.read(1, &mut w).unwrap_err());
        assert!(
            msg.contains("train_000001.bin") && msg.contains("token id 4 at position 1"),
            "{msg}"
        );
        // A shard shorter than its header says is refused when mapped.
        let short = dir.join("short.bin");
        let mut bytes = fs::read(dir.join("train_000001.bin")).unwrap();
        bytes.pop();
        fs::write(&short, bytes).unwrap();
        let msg = format!("{:#}", TokenData::open(&[short], 10).unwrap_err());
        assert!(
            msg.contains("short.bin") && msg.contains("truncated"),
            "{msg}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// The stream over many mapped shards (of uneven sizes, some empty) gives every training
    /// and evaluation window exactly as the same tokens held as one piece in memory.
    #[test]
    fn windows_across_shards_equal_the_concatenation() {
        let dir = std::env::temp_dir().join(format!("ferrotron-span-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let all: Vec<u16> = (0..2000u32).map(|i| (i * 7919 % 50000) as u16).collect();
        let cuts = [0, 3, 3, 400, 401, 1234, 1999, 2000, 2000];
        let mut files = Vec::new();
        for (k, w) in cuts.windows(2).enumerate() {
            let f = dir.join(format!("s_{k:03}.bin"));
            write_shard(&f, &all[w[0]..w[1]]).unwrap();
            files.push(f);
        }
        let mapped = Arc::new(TokenData::open(&files, 50257).unwrap());
        let mem = Arc::new(TokenData::from_tokens(all));
        assert_eq!(mapped.len(), mem.len());
        for t in [1, 7, 64] {
            let mut a = TrainSampler::new(mapped.clone(), t, 3, SamplerKind::Feistel).unwrap();
            let mut b = TrainSampler::new(mem.clone(), t, 3, SamplerKind::Feistel).unwrap();
            let n = a.num_windows() as u64;
            let (mut xa, mut ya, mut xb, mut yb) = (vec![0; t], vec![0; t], vec![0; t], vec![0; t]);
            for g in 0..2 * n {
                a.fill(g, &mut xa, &mut ya).unwrap();
                b.fill(g, &mut xb, &mut yb).unwrap();
                assert_eq!((&xa, &ya), (&xb, &yb), "T={t} sample {g}");
            }
            let (ea, eb) = (
                EvalWindows::new(mapped.clone(), t).unwrap(),
                EvalWindows::new(mem.clone(), t).unwrap(),
            );
            for i in 0..ea.num_sequences() {
                ea.sequence(i, &mut xa, &mut ya).unwrap();
                eb.sequence(i, &mut xb, &mut yb).unwrap();
                assert_eq!((&xa, &ya), (&xb, &yb), "T={t} eval {i}");
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// Both orders are part of the checkpoint format: a change here would make resumed runs
    /// train on other samples than their checkpoints' runs. (The shuffle values are those of
    /// every ferrotron before samplers were versioned.)
    #[test]
    fn orders_are_pinned() {
        assert_eq!(
            epoch_permutation(12, 1337, 0),
            [10, 1, 0, 2, 3, 5, 4, 11, 7, 9, 6, 8]
        );
        assert_eq!(
            epoch_permutation(12, 1337, 1),
            [6, 11, 4, 1, 9, 7, 3, 10, 2, 5, 8, 0]
        );
        let f = |e| {
            (0..12)
                .map(|i| feistel_index(i, 12, 1337, e))
                .collect::<Vec<_>>()
        };
        assert_eq!(f(0), [0, 7, 2, 10, 1, 8, 5, 9, 3, 6, 11, 4]);
        assert_eq!(f(1), [3, 10, 11, 6, 2, 5, 0, 1, 8, 9, 7, 4]);
    }
}
