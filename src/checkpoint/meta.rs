//! `meta.h5`: what a checkpoint holds besides tensors (see `format` for the attribute list).

use super::format::{read_str_attr, read_u64_attr, write_str_attr, write_u64_attr, FORMAT_VERSION};
use crate::model::gpt2::Gpt2Config;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Run state at a checkpoint: the grid that wrote it, the position in training, the model shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub format_version: u32,
    pub ferrotron_version: String,
    /// The run's config (TOML text).
    pub config: String,
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    /// ZeRO stage of the writing run (1: optimizer state in `optim_*` files).
    pub zero: usize,
    /// Optimizer steps done.
    pub step: usize,
    pub tokens: u64,
    /// Training samples consumed (the data-loader position).
    pub samples: u64,
    pub seed: u64,
    /// AdamW's step counter t.
    pub adam_t: u64,
    pub global_batch_size: usize,
    pub seq_len: usize,
    /// The model shape (unpadded vocabulary).
    pub model: Gpt2Config,
    /// Order of the training windows (`data.sampler`); "shuffle" for checkpoints written
    /// before it was recorded.
    pub sampler: String,
}

const COUNTS: [&str; 12] = [
    "dp",
    "tp",
    "pp",
    "zero",
    "step",
    "global_batch_size",
    "seq_len",
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
];

impl Meta {
    fn counts(&self) -> [usize; 12] {
        let m = &self.model;
        [
            self.dp,
            self.tp,
            self.pp,
            self.zero,
            self.step,
            self.global_batch_size,
            self.seq_len,
            m.vocab_size,
            m.n_positions,
            m.n_embd,
            m.n_layer,
            m.n_head,
        ]
    }

    /// Writes `meta.h5` at `path` (a plain write; the caller makes it atomic).
    pub fn write(&self, path: &Path) -> Result<()> {
        let f = hdf5::File::create(path)?;
        write_u64_attr(&f, "format_version", self.format_version as u64)?;
        write_str_attr(&f, "ferrotron_version", &self.ferrotron_version)?;
        write_str_attr(&f, "config", &self.config)?;
        for (k, v) in COUNTS.iter().zip(self.counts()) {
            write_u64_attr(&f, k, v as u64)?;
        }
        write_u64_attr(&f, "tokens", self.tokens)?;
        write_u64_attr(&f, "samples", self.samples)?;
        write_u64_attr(&f, "seed", self.seed)?;
        write_u64_attr(&f, "adam_t", self.adam_t)?;
        write_str_attr(&f, "sampler", &self.sampler)?;
        f.flush()?;
        Ok(())
    }

    /// Reads `<dir>/meta.h5`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("meta.h5");
        let f =
            hdf5::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let ctx = || format!("{}: missing or bad attribute", path.display());
        let version = read_u64_attr(&f, "format_version").with_context(ctx)? as u32;
        if version != FORMAT_VERSION {
            bail!(
                "{}: checkpoint format version {version}, this ferrotron reads version {FORMAT_VERSION}",
                path.display()
            );
        }
        let mut c = [0usize; 12];
        for (k, v) in COUNTS.iter().zip(c.iter_mut()) {
            *v = read_u64_attr(&f, k)
                .with_context(|| format!("{}: attribute {k}", path.display()))?
                as usize;
        }
        let u = |k: &str| {
            read_u64_attr(&f, k).with_context(|| format!("{}: attribute {k}", path.display()))
        };
        for (k, v) in [("dp", c[0]), ("tp", c[1]), ("pp", c[2])] {
            anyhow::ensure!(
                (1..=1 << 20).contains(&v),
                "{}: attribute {k} = {v} is not a grid size",
                path.display()
            );
        }
        anyhow::ensure!(
            c[3] <= 1,
            "{}: attribute zero = {} (0 or 1)",
            path.display(),
            c[3]
        );
        Gpt2Config::new(c[7], c[8], c[9], c[10], c[11])
            .check_bounds(&path.display().to_string())?;
        // The grid sizes the list of files to read: it must fit what the directory holds (so a
        // corrupt attribute cannot make ferrotron list or open millions of files).
        let present = std::fs::read_dir(dir).map_or(0, |d| d.count());
        let shards = c[1] as u128 * c[2] as u128;
        anyhow::ensure!(
            shards <= present as u128 && c[0] as u128 * shards <= 1 << 24,
            "{}: a grid of dp {} × tp {} × pp {} does not fit the {present} files in {}",
            path.display(),
            c[0],
            c[1],
            c[2],
            dir.display()
        );
        Ok(Self {
            format_version: version,
            ferrotron_version: read_str_attr(&f, "ferrotron_version").with_context(ctx)?,
            config: read_str_attr(&f, "config").with_context(ctx)?,
            dp: c[0],
            tp: c[1],
            pp: c[2],
            zero: c[3],
            step: c[4],
            global_batch_size: c[5],
            seq_len: c[6],
            model: Gpt2Config::new(c[7], c[8], c[9], c[10], c[11]),
            tokens: u("tokens")?,
            samples: u("samples")?,
            seed: u("seed")?,
            adam_t: u("adam_t")?,
            sampler: if f.attr("sampler").is_ok() {
                read_str_attr(&f, "sampler").with_context(ctx)?
            } else {
                "shuffle".into() // written before samplers were recorded
            },
        })
    }

    /// Whether dp ranks wrote their own optimizer files (ZeRO-1 with dp > 1).
    pub fn sharded_optim(&self) -> bool {
        self.zero == 1 && self.dp > 1
    }

    /// Every file of the checkpoint, in a fixed order.
    pub fn files(&self) -> Vec<String> {
        let mut v = vec!["meta.h5".to_string()];
        for p in 0..self.pp {
            for t in 0..self.tp {
                v.push(super::format::shard_file(p, t));
                if self.sharded_optim() {
                    v.extend((0..self.dp).map(|d| super::format::optim_file(p, t, d)));
                }
            }
        }
        v
    }
}
