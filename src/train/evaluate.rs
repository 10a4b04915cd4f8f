//! Evaluation on any grid and backend through the training model: the trainer's set-up for
//! evaluation (the grid check, this rank's `StageModel` shard, the pipeline engine; no
//! optimizer state or gradients: `Trainer::for_eval`) and its validation pass
//! (`Trainer::validate`: batch k on data-parallel replica k mod dp, through the pipeline), with
//! weights from a Hugging Face directory or a training checkpoint written on any grid.

use super::{ckpt, Trainer};
use crate::backend::cpu::Cpu;
use crate::backend::prelude::*;
use crate::config::{BackendKind, Config};
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use crate::parallel::groups::{gather_facts, Groups};
use crate::parallel::shard::{repad, StageLayout};
use crate::parallel::stage::StageModel;
use crate::parallel::Grid;
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// A Hugging Face GPT-2 directory (config.json + model.safetensors).
    Hf(PathBuf),
    /// A training checkpoint: a `step_<N>` directory or a `checkpoint.dir` (its `latest`).
    Ckpt(PathBuf),
}

/// What to evaluate, where.
#[derive(Debug, Clone)]
pub struct EvalJob {
    pub weights: Weights,
    /// Token shards: a file, a folder (its `val_` shards) or `dir/prefix_*.bin`.
    pub data: String,
    /// Sequences per batch (per data-parallel replica's forward).
    pub batch: usize,
    pub seq: usize,
    /// The first K batches (default: all full batches).
    pub batches: Option<usize>,
    pub tp: usize,
    pub pp: usize,
    pub backend: BackendKind,
    pub threads: usize,
}

/// The mean loss per token over the batches and the tokens it covers; every rank returns it.
pub fn evaluate(rt: &Runtime, job: &EvalJob) -> Result<(f64, u64)> {
    let (cfg, ckpt_dir, k) = rt.agree(config_for(job, rt.size))?;
    let loss = match job.backend {
        BackendKind::Cpu => {
            let be = rt.agree(Cpu::resolved(None, job.threads, rt.rank == 0))?;
            run_on(rt, &cfg, ckpt_dir, be)?
        }
        BackendKind::Cuda => {
            let be = rt.agree(crate::backend::cuda::CudaBackend::with_options(
                rt.local_rank,
                cfg.train.precision,
            ))?;
            run_on(rt, &cfg, ckpt_dir, be)?
        }
    };
    Ok((loss, (k * job.batch * job.seq) as u64))
}

fn run_on<B: Backend>(rt: &Runtime, cfg: &Config, ckpt_dir: Option<PathBuf>, be: B) -> Result<f64> {
    let set_up = || -> Result<Trainer<B>> {
        let mut tr = Trainer::for_eval(cfg, rt.size, rt.rank, be, ckpt_dir.is_none())?;
        if let Some(dir) = &ckpt_dir {
            tr.load_params(&mut ckpt::open_source(dir)?)?;
        }
        Ok(tr)
    };
    let mut tr = rt.agree(set_up())?;
    let facts = gather_facts(&rt.world, &tr.model.be)?;
    let (plan, _) = rt.agree(crate::comm::link::resolve(cfg.comm.backend, &facts))?;
    let mut gr = rt.agree(Groups::new(&rt.world, tr.grid, rt.rank))?;
    gr.connect(plan, &tr.model.be)
        .context("setting up the communicators")?;
    let loss = tr.validate_f64(&gr)?.context("no validation batches")?;
    Ok(loss)
}

/// The training config that evaluates `job` on `world` ranks (dp = world / (tp·pp)), the
/// checkpoint to load, and the number of batches K.
fn config_for(job: &EvalJob, world: usize) -> Result<(Config, Option<PathBuf>, usize)> {
    if job.batch == 0 || job.seq == 0 {
        bail!("--batch and --seq must be > 0");
    }
    let model = weights_model(&job.weights)?;
    let (init_hf, ckpt_dir) = match &job.weights {
        Weights::Hf(dir) => (Some(dir.clone()), None),
        Weights::Ckpt(spec) => (None, Some(ckpt_dir(spec)?)),
    };
    if job.seq > model.n_positions {
        bail!(
            "--seq {} exceeds the model's n_positions {}",
            job.seq,
            model.n_positions
        );
    }
    let files = crate::data::TokenData::from_pattern(&job.data, crate::data::Split::Val)
        .context("--data")?;
    let tokens = std::sync::Arc::new(
        crate::data::TokenData::open(&files, model.vocab_size).context("--data")?,
    );
    let windows = crate::data::EvalWindows::new(tokens, job.seq).context("--data")?;
    let full = windows.num_full_batches(job.batch);
    let k = job.batches.unwrap_or(full);
    if k == 0 || k > full {
        bail!(
            "--data {}: {} sequences of {} tokens give {full} full batches of {}; asked for {k}",
            job.data,
            windows.num_sequences(),
            job.seq,
            job.batch
        );
    }
    let tp_pp = (job.tp * job.pp).max(1);
    if !world.is_multiple_of(tp_pp) {
        bail!(
            "the world size {world} is not divisible by --tp {} × --pp {}",
            job.tp,
            job.pp
        );
    }
    let dp = world / tp_pp;
    let first = files.first().context("--data: no shard")?;
    let mut text = format!(
        "[model]\nvocab_size = {}\nn_positions = {}\nn_embd = {}\nn_layer = {}\nn_head = {}\n\
         [data]\ntrain = {:?}\nval = {:?}\n\
         [train]\nsteps = 1\nmicro_batch_size = {}\nglobal_batch_size = {}\nseq_len = {}\n\
         val_every = 0\nval_batches = {k}\nbackend = {:?}\n",
        model.vocab_size,
        model.n_positions,
        model.n_embd,
        model.n_layer,
        model.n_head,
        first.to_string_lossy(),
        job.data,
        job.batch,
        job.batch * dp,
        job.seq,
        match job.backend {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        },
    );
    if let Some(dir) = init_hf {
        text.push_str(&format!("init_hf = {:?}\n", dir.to_string_lossy()));
    }
    text.push_str(&format!(
        "[parallel]\ntp = {}\npp = {}\n[log]\nplot = false\nsave_final = false\n",
        job.tp, job.pp
    ));
    let cfg = Config::from_str_with_overrides(&text, &[])?;
    Ok((cfg, ckpt_dir, k))
}

/// The checkpoint directory `--ckpt` names: a `step_<N>` directory, or a `checkpoint.dir` and
/// its latest complete checkpoint.
fn ckpt_dir(spec: &std::path::Path) -> Result<PathBuf> {
    crate::checkpoint::load::resolve(&spec.to_string_lossy(), None)?
        .with_context(|| format!("--ckpt {}: no complete checkpoint", spec.display()))
}

/// The model shape (unpadded vocabulary) `weights` hold.
pub fn weights_model(weights: &Weights) -> Result<Gpt2Config> {
    match weights {
        Weights::Hf(dir) => crate::checkpoint::hf::read_config(dir),
        Weights::Ckpt(spec) => Ok(crate::checkpoint::meta::Meta::read(&ckpt_dir(spec)?)?.model),
    }
}

/// This rank's stage of `model` on `grid` (TP-padded, sharded as in training) and its
/// parameters from `weights`, written on any grid.
pub fn load_stage<B: Backend>(
    be: B,
    model: Gpt2Config,
    weights: &Weights,
    grid: Grid,
    rank: usize,
) -> Result<(StageModel<B>, B::Buf)> {
    let c = grid.coords(rank);
    let gcfg = model.with_tp_padding(grid.tp);
    let glayout = ParamLayout::new(&gcfg);
    let layout = StageLayout::new(&gcfg, &glayout, grid.tp, c.tp, grid.pp, c.pp)?;
    let host = match weights {
        Weights::Hf(dir) => {
            let (hcfg, params) = crate::checkpoint::hf::load(dir)?;
            let global = repad(&ParamLayout::new(&hcfg), &params, &glayout);
            let mut local = vec![0.0f32; layout.total];
            layout.extract(&glayout, &global, &mut local);
            local
        }
        Weights::Ckpt(spec) => {
            let dir = ckpt_dir(spec)?;
            let mut src = ckpt::open_source(&dir)?;
            src.load_local(&layout, crate::checkpoint::load::Kind::Model)?
        }
    };
    let params = be.upload_vec(host)?;
    Ok((StageModel::new(gcfg, layout, be), params))
}
