//! The trainer's side of checkpoints: what a rank writes (a host snapshot) and how it takes
//! its state back from a checkpoint written on any grid. Formats live in `crate::checkpoint`.

use super::{describe, Trainer};
use crate::backend::prelude::*;
use crate::checkpoint::format::FORMAT_VERSION;
use crate::checkpoint::load::{self, Kind, Source};
use crate::checkpoint::meta::Meta;
use crate::checkpoint::save::{list_steps, OptimState, Snapshot};
use crate::config::Config;
use crate::data::SamplerKind;
use crate::model::gpt2::Gpt2Config;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

impl<B: Backend> Trainer<B> {
    /// Host copy of what this rank writes after `step` steps: the model (and, without ZeRO,
    /// the optimizer state) on dp rank 0, its ZeRO-1 shard on every dp rank, `meta.h5` on
    /// world rank 0. The buffers of `spare` (the previous snapshot) are refilled when given.
    pub(crate) fn snapshot(
        &self,
        step: usize,
        world_rank: usize,
        spare: Option<Snapshot>,
    ) -> Result<Snapshot> {
        let be = &self.model.be;
        let first_replica = self.coords.dp == 0;
        let (old_p, old_m, old_v) = match spare {
            Some(s) => {
                let (m, v) = match s.optim {
                    OptimState::Full { m, v } | OptimState::Zero { m, v, .. } => (m, v),
                    OptimState::None => (Vec::new(), Vec::new()),
                };
                (s.params.unwrap_or_default(), m, v)
            }
            None => Default::default(),
        };
        let params = if first_replica {
            let mut p = old_p;
            be.download_into(&self.params, &mut p)?;
            Some(p)
        } else {
            None
        };
        let (mut m, mut v) = (old_m, old_v);
        let optim = match (&self.zero, &self.opt) {
            (Some(z), _) => {
                let (lo, zm, zv, _) = z.state();
                m.clear();
                m.extend_from_slice(zm);
                v.clear();
                v.extend_from_slice(zv);
                OptimState::Zero { lo, m, v }
            }
            (None, Some(o)) if first_replica => {
                be.download_into(&o.m, &mut m)?;
                be.download_into(&o.v, &mut v)?;
                OptimState::Full { m, v }
            }
            _ => OptimState::None,
        };
        let meta = (world_rank == 0).then(|| self.meta(step)).transpose()?;
        Ok(Snapshot {
            step,
            layout: self.model.layout.clone(),
            global: self.glayout.clone(),
            vocab: self.cfg.model.vocab_size,
            dp_rank: self.coords.dp,
            params,
            optim,
            meta,
        })
    }

    fn adam_t(&self) -> u64 {
        match (&self.zero, &self.opt) {
            (Some(z), _) => z.state().3,
            (None, Some(o)) => o.t,
            _ => 0,
        }
    }

    fn meta(&self, step: usize) -> Result<Meta> {
        let t = &self.cfg.train;
        Ok(Meta {
            format_version: FORMAT_VERSION,
            ferrotron_version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.cfg.to_toml()?,
            dp: self.grid.dp,
            tp: self.grid.tp,
            pp: self.grid.pp,
            zero: self.cfg.optim.zero as usize,
            step,
            tokens: (step * t.global_batch_size * t.seq_len) as u64,
            samples: (step * t.global_batch_size) as u64,
            seed: t.seed,
            adam_t: self.adam_t(),
            global_batch_size: t.global_batch_size,
            seq_len: t.seq_len,
            model: Gpt2Config::from_model_config(&self.cfg.model),
            sampler: self.sampler_kind.name().to_string(),
        })
    }

    /// Takes parameters and optimizer state from `src` (written on any grid); returns the
    /// number of steps it holds.
    pub(crate) fn restore(&mut self, src: &mut Source) -> Result<usize> {
        check_compatible(&self.cfg, &src.meta, &src.dir)?;
        self.sampler_kind = SamplerKind::parse(&src.meta.sampler)
            .with_context(|| format!("checkpoint {}: attribute sampler", src.dir.display()))?;
        if let Some(s) = self.sampler.as_mut() {
            s.set_kind(self.sampler_kind);
        }
        let ly = self.model.layout.clone();
        let params = src.load_local(&ly, Kind::Model)?;
        let m = src.load_local(&ly, Kind::AdamM)?;
        let v = src.load_local(&ly, Kind::AdamV)?;
        let be = &self.model.be;
        self.params = be.upload_vec(params)?;
        let t = src.meta.adam_t;
        match (self.zero.as_mut(), self.opt.as_mut()) {
            (Some(z), _) => z.restore(&m, &v, t),
            (None, Some(o)) => {
                o.m = be.upload_vec(m)?;
                o.v = be.upload_vec(v)?;
                o.t = t;
            }
            _ => bail!("optimizer state missing"),
        }
        Ok(src.meta.step)
    }
}

impl<B: Backend> Trainer<B> {
    /// Takes only the parameters from `src` (written on any grid), for evaluation: the model
    /// shape must match; the data stream and the optimizer state are not needed.
    pub(crate) fn load_params(&mut self, src: &mut Source) -> Result<()> {
        let want = Gpt2Config::from_model_config(&self.cfg.model);
        if src.meta.model != want {
            bail!(
                "checkpoint {} holds a different model ({}) than asked for ({})",
                src.dir.display(),
                describe(&src.meta.model),
                describe(&want)
            );
        }
        let ly = self.model.layout.clone();
        let params = src.load_local(&ly, Kind::Model)?;
        self.params = self.model.be.upload_vec(params)?;
        Ok(())
    }
}

/// A checkpoint can continue this run when the model shape and the data stream match (the
/// grid and ZeRO may differ).
fn check_compatible(cfg: &Config, meta: &Meta, dir: &std::path::Path) -> Result<()> {
    let want = Gpt2Config::from_model_config(&cfg.model);
    if meta.model != want {
        bail!(
            "checkpoint {} holds a different model ({}) than [model] ({})",
            dir.display(),
            describe(&meta.model),
            describe(&want)
        );
    }
    let t = &cfg.train;
    for (k, ck, now) in [
        (
            "train.global_batch_size",
            meta.global_batch_size as u64,
            t.global_batch_size as u64,
        ),
        ("train.seq_len", meta.seq_len as u64, t.seq_len as u64),
        ("train.seed", meta.seed, t.seed),
    ] {
        if ck != now {
            bail!(
                "{k} = {now}, but checkpoint {} was trained with {ck}; the data order would not continue (set {k} = {ck})",
                dir.display()
            );
        }
    }
    if let Some(want) = cfg.data.sampler.as_deref() {
        if want != meta.sampler {
            bail!(
                "data.sampler = {want:?}, but checkpoint {} was trained with {:?}; the data order would not continue (set data.sampler = {:?} or leave it unset)",
                dir.display(),
                meta.sampler,
                meta.sampler
            );
        }
    }
    Ok(())
}

/// The checkpoint to resume from (`--resume auto|PATH`), checking that saving into
/// `checkpoint.dir` cannot overwrite newer checkpoints: a fresh run needs a directory without
/// complete checkpoints, a resumed one none newer than its start.
pub(crate) fn resume_source(cfg: &Config, spec: Option<&str>) -> Result<Option<PathBuf>> {
    let root = cfg.checkpoint.dir.as_deref();
    let found = match spec {
        Some(s) => load::resolve(s, root)?,
        None => None,
    };
    let Some(root) = root else {
        return Ok(found);
    };
    let start = match &found {
        Some(dir) => Meta::read(dir)?.step,
        None => 0,
    };
    let newer = list_steps(root)?
        .into_iter()
        .rev()
        .find(|s| s.2 && (found.is_none() || s.0 > start));
    if let Some((n, p, _)) = newer {
        let how = if found.is_some() {
            format!("newer than the resumed step {start}")
        } else {
            "and this run starts from scratch".to_string()
        };
        bail!(
            "checkpoint.dir = {} already holds {} (step {n}) {how}; resume with --resume auto, or use another checkpoint.dir",
            root.display(),
            p.display()
        );
    }
    Ok(found)
}

/// Opens a checkpoint for reading with context.
pub(crate) fn open_source(dir: &std::path::Path) -> Result<Source> {
    Source::open(dir).with_context(|| format!("reading checkpoint {}", dir.display()))
}
