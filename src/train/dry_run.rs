//! `ferrotron train --dry-run`: everything a run does before its first step that can be checked
//! without loading data or weights — the config, the grid against the world, the data files,
//! the communicators of every group, each rank's host and the device it would use — then one
//! JSON line per rank on rank 0's stdout and exit 0. A job script is checked this way before it
//! spends node-hours (`slurm/train-gpu.sbatch`: ranks → GPUs).

use crate::config::Config;
use crate::data::TokenData;
use crate::parallel::check_grid;
use crate::parallel::groups::Groups;
use crate::placement;
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use mpi::collective::SystemOperation;
use mpi::traits::CommunicatorCollectives;

/// Runs the set-up checks on every rank (errors agreed: one message, every rank non-zero) and
/// prints the placement lines.
pub fn dry_run(rt: &Runtime, cfg: &Config, threads: usize) -> Result<()> {
    let grid = rt.agree(check_grid(cfg, rt.size))?;
    rt.agree(data_found(cfg))?;
    let groups = rt.agree(Groups::new(&rt.world, grid, rt.rank))?;
    // One reduction over each group: every communicator really connects its ranks.
    for g in [
        &groups.tp,
        &groups.dp,
        &groups.pp,
        &groups.emb,
        &groups.world,
    ] {
        let mut one = [1.0f64];
        g.all_reduce_sum_f64_uncounted(&mut one);
    }
    let device = placement::planned_device(cfg, rt.local_rank);
    let places = placement::gather(rt, grid, threads, &device)?;
    let mut ok = 0i32;
    rt.world
        .all_reduce_into(&1i32, &mut ok, SystemOperation::sum());
    if rt.rank == 0 {
        for line in placement::host_lines(&places) {
            log::info!("{line}");
        }
        for p in &places {
            let mut v = serde_json::to_value(p)?;
            v["world"] = rt.size.into();
            v["dry_run"] = true.into();
            println!("{v}");
        }
        let (stage, mem) =
            crate::plan::memory::peak(&crate::plan::memory::Job::from_config(cfg, grid))?;
        log::info!("{}", crate::plan::memory::describe(&mem, stage));
        log::info!(
            "dry run: {ok} ranks on {} host(s) set up grid dp={} tp={} pp={}; nothing trained",
            placement::hosts(&places).len(),
            grid.dp,
            grid.tp,
            grid.pp
        );
    }
    Ok(())
}

/// The shard files of `data.train` (and `data.val` when validation is on) exist; their tokens
/// are not read.
fn data_found(cfg: &Config) -> Result<()> {
    TokenData::from_pattern(&cfg.data.train, crate::data::Split::Train).context("data.train")?;
    let t = &cfg.train;
    if t.val_every > 0 || t.val_batches > 0 {
        TokenData::from_pattern(&cfg.data.val, crate::data::Split::Val).context("data.val")?;
    }
    Ok(())
}
