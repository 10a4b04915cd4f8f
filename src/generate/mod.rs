//! `ferrotron generate`: text generation on any grid and backend through the training model
//! (`parallel::stage::StageModel`): batched prefill, a KV cache per stage sharded by heads over
//! TP, pipelined decoding across PP stages with several sequences in flight, a batch of
//! prompts split over the data-parallel replicas (prompt i on replica i mod dp).
//!
//! - [`stage`]: one stage's generation forward (embedding, blocks with cached attention, head);
//! - [`engine`]: the pipelined prefill/decode loop of one replica;
//! - [`sample`]: greedy, temperature, top-k and top-p sampling, seeded per prompt.

pub mod engine;
pub mod sample;
pub mod stage;

pub use engine::Prompt;
pub use sample::Sampling;

use crate::backend::cpu::Cpu;
use crate::backend::prelude::*;
use crate::comm::Communicator;
use crate::config::BackendKind;
use crate::model::gpt2::Gpt2Config;
use crate::parallel::groups::{gather_facts, Groups};
use crate::parallel::{Grid, Tp};
use crate::runtime::Runtime;
use crate::train::Weights;
use anyhow::{bail, Context, Result};

/// What to generate, where.
#[derive(Debug, Clone)]
pub struct GenJob {
    pub weights: Weights,
    pub prompts: Vec<Vec<u32>>,
    pub max_new: usize,
    pub sampling: Sampling,
    /// Stop a sequence after this token (kept in its output).
    pub stop: Option<u32>,
    pub tp: usize,
    pub pp: usize,
    pub backend: BackendKind,
    pub threads: usize,
    /// Log each rank's op profile of the generation (`--profile-ops`).
    pub profile_ops: bool,
}

/// The model shape `weights` hold.
pub fn model_of(weights: &Weights) -> Result<Gpt2Config> {
    crate::train::weights_model(weights)
}

/// Checks the prompts against the model: non-empty, ids in the vocabulary, prompt + new
/// tokens within the context.
pub fn check_prompts(model: &Gpt2Config, prompts: &[Vec<u32>], max_new: usize) -> Result<()> {
    if prompts.is_empty() {
        bail!("no prompts");
    }
    if max_new == 0 {
        bail!("--max-new-tokens must be ≥ 1");
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty");
        }
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= model.vocab_size) {
            bail!(
                "prompt {i}: token id {bad} is outside the vocabulary of {}",
                model.vocab_size
            );
        }
        if p.len() + max_new > model.n_positions {
            bail!(
                "prompt {i} ({} tokens) + --max-new-tokens ({max_new}) exceeds the model's context of {} positions",
                p.len(),
                model.n_positions
            );
        }
    }
    Ok(())
}

/// Generates on this rank's place in the grid (dp = world / (tp·pp)); every rank returns the
/// new tokens of every prompt (truncated after `stop`).
pub fn run(rt: &Runtime, job: &GenJob) -> Result<Vec<Vec<u32>>> {
    let (model, grid) = rt.agree((|| {
        let model = model_of(&job.weights)?;
        check_prompts(&model, &job.prompts, job.max_new)?;
        let tp_pp = (job.tp * job.pp).max(1);
        if !rt.size.is_multiple_of(tp_pp) {
            bail!(
                "the world size {} is not divisible by --tp {} × --pp {}",
                rt.size,
                job.tp,
                job.pp
            );
        }
        let grid = Grid::new(rt.size, Some(rt.size / tp_pp), job.tp, job.pp)?;
        crate::parallel::shard::check_shape(&model.with_tp_padding(grid.tp), grid.tp, grid.pp)?;
        Ok((model, grid))
    })())?;
    match job.backend {
        BackendKind::Cpu => {
            let be = rt.agree(Cpu::resolved(None, job.threads, rt.rank == 0))?;
            run_on(rt, job, model, grid, be)
        }
        BackendKind::Cuda => {
            let be = rt.agree(crate::backend::cuda::CudaBackend::with_options(
                rt.local_rank,
                crate::config::Precision::Fp32,
            ))?;
            run_on(rt, job, model, grid, be)
        }
    }
}

/// One line per rank: the engine's wall time, the share its backend ops took, and the ops by
/// time (the rest is sampling, messages and waiting for other stages).
fn log_profile(
    rank: usize,
    c: crate::parallel::Coords,
    ops: &crate::backend::profile::Profile,
    secs: f64,
) {
    let mut v: Vec<_> = ops.iter().collect();
    v.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms));
    let total: f64 = v.iter().map(|(_, s)| s.ms).sum();
    let wall = secs * 1e3;
    let list: Vec<String> = v
        .iter()
        .map(|(name, s)| format!("{name} {:.1} ms ({} calls)", s.ms, s.calls))
        .collect();
    log::info!(
        "op profile of rank {rank} (stage {}, tp {}): ops {total:.1} of {wall:.1} ms ({:.0}%): {}",
        c.pp,
        c.tp,
        100.0 * total / wall.max(1e-9),
        list.join(", ")
    );
}

fn run_on<B: Backend>(
    rt: &Runtime,
    job: &GenJob,
    model: Gpt2Config,
    grid: Grid,
    be: B,
) -> Result<Vec<Vec<u32>>> {
    let (m, params) = rt.agree(crate::train::load_stage(
        be,
        model,
        &job.weights,
        grid,
        rt.rank,
    ))?;
    let facts = gather_facts(&rt.world, &m.be)?;
    let (plan, _) = rt.agree(crate::comm::link::resolve(
        crate::config::CommBackend::Auto,
        &facts,
    ))?;
    let mut gr = rt.agree(Groups::new(&rt.world, grid, rt.rank))?;
    gr.connect(plan, &m.be)
        .context("setting up the communicators")?;
    let coords = grid.coords(rt.rank);
    let mine: Vec<Prompt> = job
        .prompts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % grid.dp == coords.dp)
        .map(|(index, ids)| Prompt {
            index,
            ids: ids.clone(),
        })
        .collect();
    let tp = Tp::of(&gr.tp);
    let pp = (grid.pp > 1).then_some(&gr.pp as &dyn crate::comm::AsyncComm);
    m.be.set_profiling(job.profile_ops);
    let t0 = std::time::Instant::now();
    let got = engine::run(&m, &params, &mine, job.max_new, &job.sampling, &tp, pp)?;
    if let Some(ops) = m.be.take_profile()? {
        log_profile(rt.rank, coords, &ops, t0.elapsed().as_secs_f64());
    }
    m.be.set_profiling(false);
    // Gather on every rank: the owner (last stage, tp rank 0) writes its prompts' tokens.
    let n = job.prompts.len();
    let mut all = vec![0.0f64; n * job.max_new];
    if coords.pp + 1 == grid.pp && coords.tp == 0 {
        for (p, ids) in mine.iter().zip(&got) {
            for (j, &t) in ids.iter().enumerate() {
                all[p.index * job.max_new + j] = t as f64;
            }
        }
    }
    gr.world.all_reduce_sum_f64(&mut all)?;
    let secs = t0.elapsed().as_secs_f64();
    if rt.rank == 0 {
        let tokens = n * job.max_new;
        log::info!(
            "generated {tokens} tokens ({n} prompts × {}) in {secs:.3} s: {:.1} tokens/s",
            job.max_new,
            tokens as f64 / secs
        );
    }
    Ok(all
        .chunks(job.max_new.max(1))
        .take(n)
        .map(|row| {
            let mut ids: Vec<u32> = row.iter().map(|&t| t as u32).collect();
            if let Some(stop) = job.stop {
                if let Some(k) = ids.iter().position(|&t| t == stop) {
                    ids.truncate(k + 1);
                }
            }
            ids
        })
        .collect())
}
