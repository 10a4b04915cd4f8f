//! `ferrotron prepare-data`: turn text, JSONL and Parquet corpora into llm.c token shards, on
//! all cores of one process or across MPI ranks, with identical output for any number of either.
//!
//! Input: files and/or directories (recursed), taken in sorted path order ([`inputs`]); the
//! formats and compressions are those of [`crate::data::sources`]. Documents are trimmed and
//! empty ones dropped.
//!
//! Output: each document is encoded as `[EOT] ++ gpt2(document)` (llm.c convention). Document
//! `i` (global index over all inputs) goes to the validation split if `i % val_every == 0`,
//! otherwise to the training split. Splits are written to `out_dir/train_NNNNNN.bin` and
//! `out_dir/val_NNNNNN.bin` (llm.c shard format, see [`crate::data::shard`]), each holding
//! exactly `shard_tokens` tokens but the last; every split gets at least one (possibly empty)
//! shard. Then `out_dir/manifest.json` ([`crate::data::manifest`]). Stale shards from an earlier
//! run are removed. The output is byte-for-byte the same for any number of ranks and threads.
//!
//! How: pass 1 ([`tokenize`]) tokenises runs of consecutive input files ("units") each on its
//! own into a work folder `out_dir/.prepare/` (units spread over ranks by size, over threads
//! within a rank); pass 2
//! ([`assemble`]) cuts the two streams into shards, spread over ranks. Every rank must see
//! `out_dir` at the same path (a shared file system on a cluster). The work folder takes about
//! as much disk as the shards and is removed at the end. An interrupted run, started again with
//! the same inputs, options and number of ranks and threads, keeps the units and shards it
//! finished; a run whose inputs and
//! options match the manifest's fingerprint does nothing.

mod assemble;
mod inputs;
mod tokenize;

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

pub use inputs::{collect_input_files, split_documents, InputFile};

use self::assemble::{fnv_hex, shard_name, Layout};
use self::tokenize::{finished, pass_key, plan_units, tokenize_unit, UnitMeta};
use super::manifest::{
    Manifest, ManifestOptions, ShardEntry, SourceEntry, Split, SplitEntry, MANIFEST_FILE,
    MANIFEST_FORMAT, MANIFEST_VERSION,
};
use super::sources::classify;
use super::tokenizer::{Gpt2Tokenizer, EOT, GPT2_VOCAB};

/// Name of the work folder inside the output folder.
pub const WORK_DIR: &str = ".prepare";

/// Options for [`prepare_data`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Every `val_every`-th document (indices 0, val_every, 2*val_every, ...)
    /// goes to validation. Default 20. Must be >= 1.
    pub val_every: usize,
    /// Maximum tokens per output shard. Default 100,000,000 (as llm.c).
    pub shard_tokens: usize,
    /// The field (JSONL) or column (Parquet) holding a document's text. Default `text`.
    pub field: String,
    /// Skip (and count) bad JSONL lines and Parquet rows instead of stopping at the first.
    pub skip_bad: bool,
    /// Draw a progress bar on rank 0 (when its stderr is a terminal).
    pub progress: bool,
    /// Input bytes per unit of pass 1 (default: from the corpus size and the number of
    /// workers, see [`tokenize::plan_units`]); the output does not depend on it.
    pub unit_bytes: Option<u64>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            val_every: 20,
            shard_tokens: 100_000_000,
            field: "text".into(),
            skip_bad: false,
            progress: false,
            unit_bytes: None,
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
    /// Bad JSONL lines or Parquet rows skipped (with `skip_bad`).
    pub skipped_lines: usize,
    /// Shard files: all train shards, then all val shards.
    pub files: Vec<PathBuf>,
    /// The folder was already up to date (nothing was done).
    pub up_to_date: bool,
    /// Inputs and shards this rank found finished by an earlier run (resumed).
    pub resumed: usize,
}

/// The ranks that share the work, and the two collective steps it needs. Every method is
/// called by every member at the same point.
pub trait Team {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Every member learns whether any failed; the failing members' errors are reported once.
    fn agree(&self, res: Result<()>) -> Result<()>;
    /// Minimum and maximum of `v` over the members.
    fn min_max(&self, v: u64) -> (u64, u64);
}

/// A team of one (a single process, tests).
pub struct Solo;

impl Team for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn agree(&self, res: Result<()>) -> Result<()> {
        res
    }
    fn min_max(&self, v: u64) -> (u64, u64) {
        (v, v)
    }
}

impl Team for crate::runtime::Runtime {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn agree(&self, res: Result<()>) -> Result<()> {
        crate::runtime::Runtime::agree(self, res)
    }
    fn min_max(&self, v: u64) -> (u64, u64) {
        use mpi::collective::SystemOperation;
        use mpi::traits::CommunicatorCollectives;
        let (mut lo, mut hi) = (0u64, 0u64);
        self.world
            .all_reduce_into(&v, &mut lo, SystemOperation::min());
        self.world
            .all_reduce_into(&v, &mut hi, SystemOperation::max());
        (lo, hi)
    }
}

/// Tokenise `inputs` into train/val shards and a manifest under `out_dir` (created if missing),
/// sharing the work among `team`. See the module docs for the exact rules.
pub fn prepare_data(
    team: &dyn Team,
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &PrepareOptions,
) -> Result<PrepareSummary> {
    let t0 = Instant::now();
    let mut plan = team.agree_with(|| Plan::new(inputs, out_dir, opts))?;
    let threads = team.min_max(rayon::current_num_threads() as u64).1 as usize;
    plan.units = plan_units(&plan.inputs, team.size() * threads, opts.unit_bytes);
    let (lo, hi) = team.min_max(u64::from_str_radix(&plan.fingerprint, 16).unwrap_or(0));
    team.agree(if lo == hi {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "the ranks see different input files or options (are --input and --out on a \
             file system every rank shares, at the same path?)"
        ))
    })?;
    let up_to_date = team.rank() == 0 && plan.up_to_date();
    if team.min_max(u64::from(up_to_date)).1 == 1 {
        log::info!(
            "prepare-data: {} is up to date (same inputs and options as its manifest)",
            out_dir.display()
        );
        return team.agree_with(|| plan.summary_from_manifest());
    }
    if team.rank() == 0 {
        team.agree(plan.start_work())?;
    } else {
        team.agree(Ok(()))?;
    }
    let mut resumed = 0;
    let mine = team.agree_with(|| plan.tokenize_share(team, &mut resumed))?;
    let metas = team.agree_with(|| plan.load_metas(team, mine))?;
    let layout = Layout::new(&metas, opts.val_every, opts.shard_tokens);
    team.agree_with(|| plan.check_not_empty(&layout))?;
    team.agree_with(|| plan.write_shard_share(team, &layout, &mut resumed))?;
    let summary = team.agree_with(|| {
        if team.rank() == 0 {
            plan.finish(&metas, &layout)
        } else {
            Ok(())
        }
        .map(|()| plan.summary(&metas, &layout, resumed))
    })?;
    if team.rank() == 0 {
        log::info!(
            "prepare-data: {} input files, {} documents ({} train / {} val), {} train tokens, \
             {} val tokens, {} shard files in {} ({:.2} s on {} rank(s))",
            summary.input_files.len(),
            summary.documents,
            summary.train_documents,
            summary.val_documents,
            summary.train_tokens,
            summary.val_tokens,
            summary.files.len(),
            out_dir.display(),
            t0.elapsed().as_secs_f64(),
            team.size()
        );
    }
    Ok(summary)
}

/// [`Team::agree`] for a computation with a value.
trait AgreeWith {
    fn agree_with<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T>;
}

impl AgreeWith for dyn Team + '_ {
    fn agree_with<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let res = f();
        let (status, value) = match res {
            Ok(v) => (Ok(()), Some(v)),
            Err(e) => (Err(e), None),
        };
        self.agree(status)?;
        value.context("internal: agreed success without a value")
    }
}

/// One run's inputs, folders and options, the same on every rank.
struct Plan<'a> {
    inputs: Vec<InputFile>,
    /// Runs of consecutive inputs tokenised as one piece ([`plan_units`]).
    units: Vec<Range<usize>>,
    given: Vec<PathBuf>,
    out: PathBuf,
    work: PathBuf,
    opts: &'a PrepareOptions,
    /// Options of pass 1 (see [`pass_key`]).
    key: String,
    /// Hash of the inputs (path, size, modification time) and all options.
    fingerprint: String,
}

impl<'a> Plan<'a> {
    fn new(given: &[PathBuf], out: &Path, opts: &'a PrepareOptions) -> Result<Self> {
        ensure!(opts.val_every >= 1, "--val-every must be >= 1");
        ensure!(opts.shard_tokens >= 1, "--shard-tokens must be >= 1");
        let inputs = collect_input_files(given)?;
        fs::create_dir_all(out)
            .with_context(|| format!("creating output directory {}", out.display()))?;
        let key = pass_key(&opts.field, opts.skip_bad, opts.val_every);
        let mut id = format!(
            "v{MANIFEST_VERSION}|{key}|shard_tokens={}",
            opts.shard_tokens
        );
        for f in &inputs {
            id += &format!("|{}:{}:{}", f.path.display(), f.bytes, f.mtime_ns);
        }
        Ok(Self {
            inputs,
            units: Vec::new(),
            given: given.to_vec(),
            out: out.to_path_buf(),
            work: out.join(WORK_DIR),
            opts,
            key,
            fingerprint: fnv_hex(&id),
        })
    }

    /// Whether the output folder's manifest has this run's fingerprint and all its shards.
    fn up_to_date(&self) -> bool {
        let Ok(m) = Manifest::load(&self.out.join(MANIFEST_FILE)) else {
            return false;
        };
        m.fingerprint == self.fingerprint
            && [Split::Train, Split::Val]
                .iter()
                .all(|&s| m.shard_paths(&self.out, s).is_ok())
    }

    /// Rank 0, before any shard is written: the old manifest goes (it would describe shards
    /// about to change), the work folder is made.
    fn start_work(&self) -> Result<()> {
        let manifest = self.out.join(MANIFEST_FILE);
        if manifest.exists() {
            fs::remove_file(&manifest)
                .with_context(|| format!("removing the old {}", manifest.display()))?;
        }
        fs::create_dir_all(&self.work)
            .with_context(|| format!("creating work folder {}", self.work.display()))
    }

    /// Pass 1 on this rank's share of the units; returns their metas.
    fn tokenize_share(&self, team: &dyn Team, resumed: &mut usize) -> Result<Vec<UnitMeta>> {
        let owner = self.unit_owners(team.size());
        let mine: Vec<&Range<usize>> = self
            .units
            .iter()
            .zip(&owner)
            .filter(|(_, &r)| r == team.rank())
            .map(|(u, _)| u)
            .collect();
        let bytes: u64 = mine.iter().map(|u| self.unit_bytes(u)).sum();
        let bar = progress_bar(
            team.rank() == 0 && self.opts.progress,
            bytes,
            &format!("tokenizing (rank 0 of {})", team.size()),
        );
        let tok = Gpt2Tokenizer::new()?;
        let done: Vec<(UnitMeta, bool)> = mine
            .par_iter()
            .map(|&u| {
                let res = match finished(&self.work, u, &self.inputs, &self.key) {
                    Some(m) => Ok((m, true)),
                    None => tokenize_unit(&self.work, u, &self.inputs, self.opts, &tok)
                        .map(|m| (m, false)),
                };
                bar.inc(self.unit_bytes(u));
                res
            })
            .collect::<Result<_>>()?;
        bar.finish_and_clear();
        *resumed += done.iter().filter(|d| d.1).count();
        Ok(done.into_iter().map(|d| d.0).collect())
    }

    fn unit_bytes(&self, u: &Range<usize>) -> u64 {
        self.inputs[u.clone()].iter().map(|f| f.bytes).sum()
    }

    /// Owner rank of each unit: largest first to the least-loaded rank (ties: lower index,
    /// lower rank), so ranks get similar byte counts. The output does not depend on it.
    fn unit_owners(&self, ranks: usize) -> Vec<usize> {
        let sizes: Vec<u64> = self.units.iter().map(|u| self.unit_bytes(u)).collect();
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&k| (std::cmp::Reverse(sizes[k]), k));
        let mut load = vec![0u64; ranks];
        let mut owner = vec![0; sizes.len()];
        for k in order {
            let r = (0..ranks).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            owner[k] = r;
            load[r] += sizes[k].max(1);
        }
        owner
    }

    /// Every unit's meta: this rank's own, the others' from the work folder.
    fn load_metas(&self, team: &dyn Team, mine: Vec<UnitMeta>) -> Result<Vec<UnitMeta>> {
        let mut own: std::collections::HashMap<usize, UnitMeta> =
            mine.into_iter().map(|m| (m.first, m)).collect();
        let owner = self.unit_owners(team.size());
        self.units
            .iter()
            .zip(owner)
            .map(|(u, r)| match own.remove(&u.start) {
                Some(m) => Ok(m),
                None => finished(&self.work, u, &self.inputs, &self.key).with_context(|| {
                    format!(
                        "rank {r} reported {} done but its results are not in {} (is --out on \
                         a file system every rank shares?)",
                        self.inputs[u.start].path.display(),
                        self.work.display()
                    )
                }),
            })
            .collect()
    }

    fn check_not_empty(&self, layout: &Layout) -> Result<()> {
        if layout.train.documents + layout.val.documents == 0 {
            bail!(
                "no usable input text found in {} (after skipping hidden, .dat/.u8, \
                 non-UTF-8 and binary files, and empty documents)",
                inputs::display_paths(&self.given)
            );
        }
        Ok(())
    }

    /// Pass 2 on this rank's share of the shards.
    fn write_shard_share(
        &self,
        team: &dyn Team,
        layout: &Layout,
        resumed: &mut usize,
    ) -> Result<()> {
        let mine: Vec<(Split, usize)> = layout
            .shard_list()
            .into_iter()
            .enumerate()
            .filter(|(q, _)| q % team.size() == team.rank())
            .map(|(_, s)| s)
            .collect();
        let bar = progress_bar(
            team.rank() == 0 && self.opts.progress,
            mine.len() as u64,
            &format!("writing shards (rank 0 of {})", team.size()),
        );
        let written: Vec<bool> = mine
            .par_iter()
            .map(|&(s, j)| {
                let r = assemble::write_one(&self.work, &self.out, layout, s, j);
                bar.inc(1);
                r
            })
            .collect::<Result<_>>()?;
        bar.finish_and_clear();
        *resumed += written.iter().filter(|w| !**w).count();
        Ok(())
    }

    /// Rank 0, after every shard is written: stale shards go, the manifest is written, the work
    /// folder removed.
    fn finish(&self, metas: &[UnitMeta], layout: &Layout) -> Result<()> {
        for s in [Split::Train, Split::Val] {
            remove_stale_shards(
                &self.out,
                s.prefix(),
                layout.split(s).shards(layout.shard_tokens),
            )?;
        }
        let manifest = self.manifest(metas, layout);
        let inputs = || metas.iter().flat_map(|m| &m.inputs);
        for w in inputs().filter(|m| m.skipped_rows > 0).take(1) {
            let total: u64 = inputs().map(|m| m.skipped_rows).sum();
            log::warn!(
                "prepare-data: skipped {total} bad JSONL line(s) / Parquet row(s) (--skip-bad), \
                 first in {}",
                w.path
            );
        }
        for s in [Split::Train, Split::Val] {
            if layout.split(s).tokens() == 0 {
                log::warn!(
                    "prepare-data: the {} split is empty (wrote an empty shard)",
                    s.prefix()
                );
            }
        }
        manifest.save(&self.out.join(MANIFEST_FILE))?;
        fs::remove_dir_all(&self.work)
            .with_context(|| format!("removing work folder {}", self.work.display()))
    }

    fn manifest(&self, metas: &[UnitMeta], layout: &Layout) -> Manifest {
        let split = |s: Split| {
            let l = layout.split(s);
            SplitEntry {
                documents: l.documents,
                tokens: l.tokens(),
                shards: (0..l.shards(layout.shard_tokens))
                    .map(|j| {
                        let (a, b) = layout.shard_range(s, j);
                        ShardEntry {
                            file: shard_name(s, j),
                            tokens: b - a,
                        }
                    })
                    .collect(),
            }
        };
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            tokenizer: "gpt2 (tiktoken r50k_base)".into(),
            vocab_size: GPT2_VOCAB,
            eot: EOT,
            eot_policy: "every document is prefixed with <|endoftext|> (llm.c)".into(),
            val_rule: "document i (counted over all inputs in order) is validation when \
                       i % val_every == 0"
                .into(),
            options: ManifestOptions {
                val_every: self.opts.val_every,
                shard_tokens: self.opts.shard_tokens,
                field: self.opts.field.clone(),
                skip_bad: self.opts.skip_bad,
            },
            fingerprint: self.fingerprint.clone(),
            train: split(Split::Train),
            val: split(Split::Val),
            sources: metas
                .iter()
                .flat_map(|u| &u.inputs)
                .map(|m| {
                    let (format, comp) = classify(Path::new(&m.path));
                    SourceEntry {
                        path: m.path.clone(),
                        format: format.name().into(),
                        compression: comp.name().into(),
                        bytes: m.bytes,
                        documents: m.documents,
                        tokens: m.tokens,
                        skipped_rows: m.skipped_rows,
                        skipped_file: m.skipped_file.clone(),
                    }
                })
                .collect(),
        }
    }

    fn summary(&self, metas: &[UnitMeta], layout: &Layout, resumed: usize) -> PrepareSummary {
        PrepareSummary {
            documents: (layout.train.documents + layout.val.documents) as usize,
            train_documents: layout.train.documents as usize,
            val_documents: layout.val.documents as usize,
            train_tokens: layout.train.tokens() as usize,
            val_tokens: layout.val.tokens() as usize,
            input_files: metas
                .iter()
                .flat_map(|u| &u.inputs)
                .filter(|m| m.skipped_file.is_none())
                .map(|m| PathBuf::from(&m.path))
                .collect(),
            skipped_lines: metas
                .iter()
                .flat_map(|u| &u.inputs)
                .map(|m| m.skipped_rows as usize)
                .sum(),
            files: assemble::shard_paths(&self.out, layout),
            up_to_date: false,
            resumed,
        }
    }

    fn summary_from_manifest(&self) -> Result<PrepareSummary> {
        let m = Manifest::load(&self.out.join(MANIFEST_FILE))?;
        let mut files = m.shard_paths(&self.out, Split::Train)?;
        files.extend(m.shard_paths(&self.out, Split::Val)?);
        Ok(PrepareSummary {
            documents: (m.train.documents + m.val.documents) as usize,
            train_documents: m.train.documents as usize,
            val_documents: m.val.documents as usize,
            train_tokens: m.train.tokens as usize,
            val_tokens: m.val.tokens as usize,
            input_files: m
                .sources
                .iter()
                .filter(|s| s.skipped_file.is_none())
                .map(|s| PathBuf::from(&s.path))
                .collect(),
            skipped_lines: m.sources.iter().map(|s| s.skipped_rows as usize).sum(),
            files,
            up_to_date: true,
            resumed: 0,
        })
    }
}

fn progress_bar(show: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {decimal_bytes}/{decimal_total_bytes} [{elapsed}<{eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(msg.to_string());
    bar
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
        let s = prepare_data(&Solo, std::slice::from_ref(&root), &out, &opts).unwrap();
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
        let s1 = prepare_data(&Solo, std::slice::from_ref(&root), &out1, &opts).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let s2 = pool
            .install(|| prepare_data(&Solo, std::slice::from_ref(&root), &out2, &opts))
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
                &Solo,
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
                &Solo,
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

    /// N ranks as N threads: collectives through a barrier and shared slots.
    struct ThreadTeam {
        rank: usize,
        size: usize,
        barrier: std::sync::Arc<std::sync::Barrier>,
        slots: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    }

    impl Team for ThreadTeam {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn agree(&self, res: Result<()>) -> Result<()> {
            let any_failed = self.min_max(u64::from(res.is_err())).1 == 1;
            match res {
                Ok(()) if any_failed => bail!("another rank failed"),
                r => r,
            }
        }
        fn min_max(&self, v: u64) -> (u64, u64) {
            self.slots.lock().unwrap()[self.rank] = v;
            self.barrier.wait();
            let s = self.slots.lock().unwrap().clone();
            self.barrier.wait();
            (*s.iter().min().unwrap(), *s.iter().max().unwrap())
        }
    }

    /// Run prepare-data on `n` thread-ranks; every rank's result.
    fn run_team(
        n: usize,
        inputs: &[PathBuf],
        out: &Path,
        opts: &PrepareOptions,
    ) -> Vec<Result<PrepareSummary>> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let slots = std::sync::Arc::new(std::sync::Mutex::new(vec![0; n]));
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n)
                .map(|rank| {
                    let team = ThreadTeam {
                        rank,
                        size: n,
                        barrier: barrier.clone(),
                        slots: slots.clone(),
                    };
                    sc.spawn(move || prepare_data(&team, inputs, out, opts))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Every file of a prepared folder (name → bytes); the work folder must be gone.
    fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
        assert!(
            !dir.join(WORK_DIR).exists(),
            "work folder left in {}",
            dir.display()
        );
        let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// A corpus of many small files of different sizes.
    fn many_files(dir: &Path) -> PathBuf {
        let root = dir.join("many");
        fs::create_dir_all(&root).unwrap();
        for f in 0..7 {
            let text: String = (0..(20 + 13 * f))
                .map(|i| format!("file {f} fortune {i}: {}\n%\n", "word ".repeat(i % 9)))
                .collect();
            fs::write(root.join(format!("f{f}.txt")), text).unwrap();
        }
        root
    }

    #[test]
    fn any_number_of_ranks_and_threads_gives_the_same_bytes() {
        let dir = temp_dir("ranks");
        let root = many_files(&dir);
        let opts = PrepareOptions {
            val_every: 7,
            shard_tokens: 500,
            unit_bytes: Some(1000), // several units per rank
            ..Default::default()
        };
        let solo =
            prepare_data(&Solo, std::slice::from_ref(&root), &dir.join("o1"), &opts).unwrap();
        assert!(solo.files.len() > 4, "{} shards", solo.files.len());
        let want = folder_bytes(&dir.join("o1"));
        for (n, threads) in [(2, 1), (3, 2), (4, 1)] {
            let out = dir.join(format!("o{n}"));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let res = pool.install(|| run_team(n, std::slice::from_ref(&root), &out, &opts));
            for r in res {
                let s = r.unwrap();
                assert_eq!(
                    (s.documents, s.train_tokens),
                    (solo.documents, solo.train_tokens)
                );
            }
            assert_eq!(folder_bytes(&out), want, "{n} ranks, {threads} threads");
        }
        // The manifest lists what was written and train/eval resolve through it.
        let m = Manifest::load(&dir.join("o1").join(MANIFEST_FILE)).unwrap();
        assert_eq!(m.train.tokens as usize, solo.train_tokens);
        assert_eq!(m.val.documents as usize, solo.val_documents);
        assert_eq!(m.sources.len(), 7);
        assert!(m.train.shards.iter().rev().skip(1).all(|s| s.tokens == 500));
        let train =
            crate::data::TokenData::from_pattern(dir.join("o1").to_str().unwrap(), Split::Train)
                .unwrap();
        assert_eq!(train.len(), m.train.shards.len());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_rank_fails_every_rank_and_a_rerun_resumes() {
        let dir = temp_dir("resume");
        let root = many_files(&dir);
        let opts = PrepareOptions {
            val_every: 5,
            shard_tokens: 300,
            unit_bytes: Some(1), // one unit per input
            ..Default::default()
        };
        let fresh = dir.join("fresh");
        prepare_data(&Solo, std::slice::from_ref(&root), &fresh, &opts).unwrap();
        let want = folder_bytes(&fresh);
        // A bad JSONL file (sorted last) stops the run after the text files are tokenised.
        fs::write(root.join("z.jsonl"), "{\"text\": \"ok\"}\n{oops\n").unwrap();
        let out = dir.join("out");
        let res = run_team(3, std::slice::from_ref(&root), &out, &opts);
        let errs: Vec<String> = res
            .iter()
            .map(|r| format!("{:#}", r.as_ref().unwrap_err()))
            .collect();
        assert!(
            errs.iter().any(|e| e.contains("z.jsonl:2: malformed JSON")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .filter(|e| e.contains("another rank failed"))
                .count()
                == 2,
            "{errs:?}"
        );
        assert!(!out.join(MANIFEST_FILE).exists());
        // Without the bad file, a rerun keeps the finished inputs and gives the fresh bytes.
        fs::remove_file(root.join("z.jsonl")).unwrap();
        let s = prepare_data(&Solo, std::slice::from_ref(&root), &out, &opts).unwrap();
        assert!(s.resumed >= 1, "nothing resumed");
        assert_eq!(folder_bytes(&out), want);
        // The same inputs again: up to date, nothing written.
        let again = prepare_data(&Solo, std::slice::from_ref(&root), &out, &opts).unwrap();
        assert!(again.up_to_date);
        assert_eq!(again.files, s.files);
        // A changed input is noticed (size and time), the folder rebuilt.
        fs::write(root.join("f0.txt"), "changed\n%\nfortune\n").unwrap();
        let changed = prepare_data(&Solo, std::slice::from_ref(&root), &out, &opts).unwrap();
        assert!(!changed.up_to_date);
        assert_ne!(folder_bytes(&out), want);
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
        let s = prepare_data(&Solo, &[src], &out, &PrepareOptions::default()).unwrap();
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
