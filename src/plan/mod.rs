//! `ferrotron plan`: what a configuration needs on a grid before it runs — memory per rank by
//! category (`memory`, equal to what runs account), communication per group per step
//! (`parallel::plan`, equal to what the communicators count), and a predicted step time
//! (`time`, a latency–bandwidth model on a machine profile, `machine`).
//!
//! Every candidate grid goes through the trainer's own check (`parallel::check_grid`), so a grid
//! the planner rejects is rejected by `train` with the same message.

pub mod bench_kernels;
pub mod bench_machine;
pub mod machine;
pub mod memory;
pub mod report;
pub mod time;

use crate::backend::ledger::MemCategory;
use crate::config::{Config, Recompute, Schedule};
use crate::model::gpt2::Gpt2Config;
use crate::parallel::Grid;
use anyhow::{bail, Result};
use machine::Machine;
use serde::Serialize;
use std::collections::BTreeMap;

/// One evaluated grid.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    pub micro_batch_size: usize,
    pub schedule: &'static str,
    pub zero: u8,
    /// `train.recompute`: "none", "selective" or "full".
    pub recompute: &'static str,
    /// Per rank of the stage that needs the most.
    pub mem_bytes: BTreeMap<&'static str, i64>,
    /// That stage.
    pub mem_stage: usize,
    pub fits: bool,
    /// Bytes per step per group, summed over all ranks (what the metrics count).
    pub comm_bytes: BTreeMap<&'static str, u64>,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
}

/// A grid the trainer would refuse, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    pub micro_batch_size: usize,
    pub reason: String,
}

/// `cfg` with the grid and knobs of one candidate.
fn with_grid(
    cfg: &Config,
    g: Grid,
    mb: usize,
    schedule: Schedule,
    zero: u8,
    r: Recompute,
) -> Config {
    let mut c = cfg.clone();
    c.parallel.dp = Some(g.dp);
    c.parallel.tp = g.tp;
    c.parallel.pp = g.pp;
    c.parallel.micro_batches = None;
    c.parallel.schedule = schedule;
    c.train.micro_batch_size = mb;
    c.optim.zero = zero;
    c.train.recompute = r;
    c
}

/// Evaluates `cfg` as configured (its grid, micro-batch, schedule, ZeRO) on `world` ranks,
/// after the trainer's own check of the grid.
pub fn evaluate(cfg: &Config, world: usize, m: &Machine) -> Result<Candidate> {
    let grid = crate::parallel::check_grid(cfg, world)?;
    assess(cfg, grid, m)
}

/// The figures of `cfg` on `grid` (already checked).
fn assess(cfg: &Config, grid: Grid, m: &Machine) -> Result<Candidate> {
    let job = memory::Job::from_config(cfg, grid);
    let (stage, mem) = memory::peak(&job)?;
    let padded = Gpt2Config::from_model_config(&cfg.model).with_tp_padding(grid.tp);
    let comm = crate::parallel::plan::step_bytes(
        &padded,
        grid,
        job.micro_batch,
        job.seq,
        job.accum,
        job.zero && grid.dp > 1,
        job.recompute,
    )?;
    let t = time::step(cfg, &job, m)?;
    let mut mem_bytes: BTreeMap<&'static str, i64> = MemCategory::ALL
        .iter()
        .map(|&c| (c.name(), mem.get(c)))
        .collect();
    mem_bytes.insert("total", mem.total());
    Ok(Candidate {
        dp: grid.dp,
        tp: grid.tp,
        pp: grid.pp,
        micro_batch_size: job.micro_batch,
        schedule: match cfg.parallel.schedule {
            Schedule::Gpipe => "gpipe",
            Schedule::OneFOneB => "1f1b",
        },
        zero: cfg.optim.zero,
        recompute: match cfg.train.recompute {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        },
        mem_bytes,
        mem_stage: stage,
        fits: mem.total() as f64 <= m.memory_bytes(),
        comm_bytes: comm.into_iter().filter(|(k, _)| *k != "world").collect(),
        step_ms: t.step_s * 1e3,
        tokens_per_s: t.tokens_per_s,
        mfu: t.mfu,
    })
}

/// Every (dp, tp, pp, micro-batch, schedule, zero, recompute) for `world` ranks: the ones the trainer
/// accepts, fastest first (those that fit memory before those that do not), and the rejected
/// ones with the trainer's reason.
pub fn enumerate(
    cfg: &Config,
    world: usize,
    m: &Machine,
) -> Result<(Vec<Candidate>, Vec<Rejected>)> {
    if world == 0 {
        bail!("the number of ranks must be ≥ 1");
    }
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    let gbs = cfg.train.global_batch_size;
    for tp in divisors(world) {
        for pp in divisors(world / tp) {
            let g = Grid {
                dp: world / (tp * pp),
                tp,
                pp,
            };
            let mbs: Vec<usize> = divisors(gbs)
                .into_iter()
                .filter(|mb| mb * g.dp <= gbs)
                .collect();
            for &mb in mbs.iter().chain(mbs.is_empty().then_some(&1)) {
                let schedules: &[Schedule] = if pp > 1 {
                    &[Schedule::OneFOneB, Schedule::Gpipe]
                } else {
                    &[Schedule::OneFOneB]
                };
                let zeros: &[u8] = if g.dp > 1 { &[0, 1] } else { &[0] };
                for &s in schedules {
                    // The trainer's check once per grid, micro-batch and schedule (ZeRO does
                    // not change it).
                    let grid = match crate::parallel::check_grid(
                        &with_grid(cfg, g, mb, s, 0, Recompute::None),
                        world,
                    ) {
                        Ok(grid) => grid,
                        Err(e) => {
                            if s == Schedule::OneFOneB {
                                bad.push(Rejected {
                                    dp: g.dp,
                                    tp,
                                    pp,
                                    micro_batch_size: mb,
                                    reason: format!("{e:#}"),
                                });
                            }
                            continue;
                        }
                    };
                    for &z in zeros {
                        for r in [Recompute::None, Recompute::Selective, Recompute::Full] {
                            ok.push(assess(&with_grid(cfg, g, mb, s, z, r), grid, m)?);
                        }
                    }
                }
            }
        }
    }
    // Fitting first, then fastest, then the least memory.
    ok.sort_by(|a, b| {
        let key = |c: &Candidate| (!c.fits, c.step_ms, c.mem_bytes["total"]);
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok((ok, bad))
}

fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}
