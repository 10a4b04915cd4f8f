//! Per-rank memory of a training run, by category, from the planner's own arithmetic: the sizes
//! of the buffers the trainer allocates through its backend (see `backend::ledger`), written out
//! here from the shapes. With N = B·T, Cl = C/tp, Hl = H/tp, P_s the stage's local parameters
//! (`StageLayout`), K_s the schedule's micro-batches in flight on stage s, in floats:
//!
//! - params, grads: P_s each.
//! - optimizer: AdamW m and v, 2·P_s; with ZeRO-1 (dp > 1) 2·⌈P_s/dp⌉ of state plus the step's
//!   parameter and gradient shards, 4·⌈P_s/dp⌉.
//! - activations: K_s slots of N·C (stage input) + L_s·A + on the last stage 2NC + 2N (ln_f,
//!   its statistics, and ∂ln_f kept per slot), where a layer keeps (`train.recompute`)
//!   A = 4NC + 8N·Cl + 4N + B·Hl·T² with "none" (ln1, res2, ln2, out; qkv, atty, fch; the
//!   LayerNorm statistics; the attention probabilities), A = 4NC + 8N·Cl + 4N with
//!   "selective", A = NC (the block output) with "full".
//! - logits (last stage): the head chunk R·Vl, its row losses R and statistics 3R, and with
//!   tp > 1 the 2R combined statistics uploaded per chunk.
//! - workspace: the block scratch N·C + 12·N·Cl and the stage-gradient buffer N·C; with
//!   "selective" also one B·Hl·T² for the recomputed probabilities, with "full" one layer's
//!   whole set 4NC + 8N·Cl + 4N + B·Hl·T² that each block's forward is rerun into.
//! - comm: 0 (pipeline messages are received in place; DP and TP staging is host memory
//!   outside the backend).

use crate::backend::ledger::{MemBytes, MemCategory};
use crate::config::{Config, Recompute, Schedule};
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use crate::parallel::shard::StageLayout;
use crate::parallel::stage::HEAD_CHUNK_FLOATS;
use crate::parallel::Grid;
use anyhow::Result;

/// One training configuration on one grid: everything the memory depends on.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// The model, vocabulary unpadded (padding for TP is applied here).
    pub model: Gpt2Config,
    pub grid: Grid,
    pub micro_batch: usize,
    pub seq: usize,
    /// Micro-batches per step on a dp rank (gradient accumulation).
    pub accum: usize,
    pub schedule: Schedule,
    /// ZeRO-1.
    pub zero: bool,
    /// `train.head_chunk_rows` (0 = automatic).
    pub head_chunk_rows: usize,
    /// `train.recompute`.
    pub recompute: Recompute,
}

impl Job {
    /// The job `cfg` describes on `grid` (its validation is the trainer's: see `Config`).
    pub fn from_config(cfg: &Config, grid: Grid) -> Job {
        let t = &cfg.train;
        Job {
            model: Gpt2Config::from_model_config(&cfg.model),
            grid,
            micro_batch: t.micro_batch_size,
            seq: t.seq_len,
            accum: t.global_batch_size / (t.micro_batch_size * grid.dp).max(1),
            schedule: cfg.parallel.schedule,
            zero: cfg.optim.zero == 1,
            head_chunk_rows: t.head_chunk_rows,
            recompute: t.recompute,
        }
    }

    /// Micro-batches in flight on each stage (activation slots the trainer allocates, which
    /// it takes from `schedule::simulate`): GPipe (pp > 1) holds all M, 1F1B min(pp − s, M).
    /// `tests/plan.rs` checks these against the simulator.
    pub fn in_flight(&self) -> Vec<usize> {
        let (pp, m) = (self.grid.pp, self.accum.max(1));
        (0..pp)
            .map(|s| match self.schedule {
                Schedule::Gpipe if pp > 1 => m,
                _ => (pp - s).min(m),
            })
            .collect()
    }
}

/// Bytes by category on one rank of stage `s` (every TP and DP rank of a stage is the same),
/// with `in_flight` micro-batches alive on it (see [`Job::in_flight`]).
pub fn stage_bytes(job: &Job, s: usize, in_flight: usize) -> Result<MemBytes> {
    let g = job.grid;
    let cfg = job.model.with_tp_padding(g.tp);
    let global = ParamLayout::new(&cfg);
    let ly = StageLayout::shapes(&cfg, &global, g.tp, 0, g.pp, s)?;
    let (b, t, c, h) = (job.micro_batch, job.seq, cfg.n_embd, cfg.n_head);
    let (n, cl, hl) = (b * t, c / g.tp, h / g.tp);
    let last = s + 1 == g.pp;
    let p = ly.total;
    let mut f = MemBytes::default();
    f.add(MemCategory::Params, p as i64);
    f.add(MemCategory::Grads, p as i64);
    let opt = if job.zero && g.dp > 1 {
        4 * p.div_ceil(g.dp)
    } else {
        2 * p
    };
    f.add(MemCategory::Optimizer, opt as i64);
    let (att, whole) = (b * hl * t * t, 4 * n * c + 8 * n * cl + 4 * n);
    let (layer, rerun) = match job.recompute {
        Recompute::None => (whole + att, 0),
        Recompute::Selective => (whole, att),
        Recompute::Full => (n * c, whole + att),
    };
    let mut slot = n * c + ly.layers.len() * layer;
    if last {
        slot += 2 * n * c + 2 * n;
    }
    f.add(MemCategory::Activations, (in_flight * slot) as i64);
    if last {
        let rows = match job.head_chunk_rows {
            0 => HEAD_CHUNK_FLOATS / ly.vl.max(1),
            r => r,
        }
        .clamp(1, n.max(1));
        let staged = if g.tp > 1 { 2 * rows } else { 0 };
        f.add(
            MemCategory::Logits,
            (rows * ly.vl + 4 * rows + staged) as i64,
        );
    }
    f.add(
        MemCategory::Workspace,
        (2 * n * c + 12 * n * cl + rerun) as i64,
    );
    Ok(MemBytes(f.0.map(|x| x * 4)))
}

/// One line for logs: the planned peak per rank and its split, e.g. "planned memory per rank
/// (stage 1): 3.10 GiB = params 0.23 + grads 0.23 + …".
pub fn describe(m: &MemBytes, stage: usize) -> String {
    let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
    let parts: Vec<String> = MemCategory::ALL
        .iter()
        .filter(|&&c| m.get(c) != 0)
        .map(|&c| format!("{} {:.3}", c.name(), gib(m.get(c))))
        .collect();
    format!(
        "planned memory per rank (largest: stage {stage}): {:.3} GiB = {} GiB",
        gib(m.total()),
        parts.join(" + ")
    )
}

/// The stage whose ranks need the most memory, and their bytes.
pub fn peak(job: &Job) -> Result<(usize, MemBytes)> {
    let k = job.in_flight();
    let mut best = (0, stage_bytes(job, 0, k[0])?);
    for (s, &in_flight) in k.iter().enumerate().skip(1) {
        let m = stage_bytes(job, s, in_flight)?;
        if m.total() > best.1.total() {
            best = (s, m);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed forms of [`Job::in_flight`] equal what the trainer takes from the simulator.
    #[test]
    fn in_flight_matches_the_simulator() {
        for pp in 1..6 {
            for m in 1..10 {
                for schedule in [Schedule::Gpipe, Schedule::OneFOneB] {
                    let job = Job {
                        model: Gpt2Config::new(100, 16, 16, 8, 2),
                        grid: Grid { dp: 1, tp: 1, pp },
                        micro_batch: 1,
                        seq: 4,
                        accum: m,
                        schedule,
                        zero: false,
                        head_chunk_rows: 0,
                        recompute: Recompute::None,
                    };
                    let lists: Vec<_> = (0..pp)
                        .map(|q| crate::schedule::training(schedule, pp, m, q))
                        .collect();
                    let sim = crate::schedule::simulate(&lists, m).unwrap();
                    let want: Vec<usize> = sim.max_in_flight.iter().map(|&k| k.max(1)).collect();
                    assert_eq!(job.in_flight(), want, "pp {pp} m {m} {schedule:?}");
                }
            }
        }
    }
}
