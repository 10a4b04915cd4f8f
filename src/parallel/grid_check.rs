//! The grid a config describes on a world size, with every check that needs the world size.
//! The trainer, the dry run and the planner all call [`check_grid`], so a grid the planner
//! rejects is rejected by `train` with the same message.

use super::shard::check_shape;
use super::Grid;
use crate::config::Config;
use crate::model::gpt2::Gpt2Config;
use crate::schedule::Action;
use anyhow::{bail, Context, Result};

/// The grid for this world and config, with every check that needs the world size: dp·tp·pp =
/// world; the model shape fits TP and PP (heads divisible by tp, at least one layer per stage);
/// the global batch splits evenly into micro-batches over dp; the schedule is valid. With
/// `1f1b` and fewer micro-batches than stages, 1F1B's warm-up covers every micro-batch and the
/// schedule is GPipe's (documented fallback, no error).
pub fn check_grid(cfg: &Config, world: usize) -> Result<Grid> {
    let p = &cfg.parallel;
    let grid = Grid::new(world, p.dp, p.tp, p.pp)?;
    let mcfg = Gpt2Config::from_model_config(&cfg.model).with_tp_padding(grid.tp);
    check_shape(&mcfg, grid.tp, grid.pp)?;
    let t = &cfg.train;
    if !t
        .global_batch_size
        .is_multiple_of(t.micro_batch_size * grid.dp)
    {
        bail!(
            "train.global_batch_size = {} is not divisible by train.micro_batch_size × dp = {} × {}",
            t.global_batch_size,
            t.micro_batch_size,
            grid.dp
        );
    }
    let accum = t.global_batch_size / (t.micro_batch_size * grid.dp);
    if let Some(m) = p.micro_batches {
        if m != accum {
            bail!(
                "parallel.micro_batches = {m} does not match train.global_batch_size / (train.micro_batch_size × dp) = {accum}"
            );
        }
    }
    let lists: Vec<_> = (0..grid.pp)
        .map(|s| schedule_for(cfg, grid.pp, accum, s))
        .collect();
    crate::schedule::simulate(&lists, accum).context("parallel.schedule")?;
    Ok(grid)
}

/// Stage `s`'s training schedule (1F1B when there is no pipeline: one activation set).
pub fn schedule_for(cfg: &Config, pp: usize, m: usize, s: usize) -> Vec<Action> {
    crate::schedule::training(cfg.parallel.schedule, pp, m, s)
}
