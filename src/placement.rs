//! Where the ranks of a job run: each rank's host, node-local rank, grid coordinates, threads
//! and device, gathered over MPI; the per-host start-up log line, the `--dry-run` lines and
//! the run record `<log.out_dir>/run.json`.
//!
//! Placement comes from MPI, never from a launcher's variables alone: the host is
//! `gethostname(2)` of each process and the node-local rank and size come from the
//! shared-memory split of the world ([`crate::runtime::Runtime`]), so `mpirun`, `srun` and
//! other launchers give the same answer. Launcher variables (Slurm's job id, node list,
//! restart count) are recorded beside it, for the reader, and used for nothing.

use crate::backend::cuda::device_for_local_rank;
use crate::config::{BackendKind, Config};
use crate::parallel::Grid;
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use mpi::traits::{Communicator, CommunicatorCollectives};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Bytes of a host name in the all-gather (longer names are cut; POSIX's HOST_NAME_MAX is 64).
const HOST_BYTES: usize = 256;

/// Git commit the binary was built from (`build.rs`; "unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("FERROTRON_GIT_COMMIT");

/// One rank's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankPlace {
    pub rank: usize,
    pub host: String,
    pub local_rank: usize,
    pub local_size: usize,
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    pub threads: usize,
    /// `cpu`, or the CUDA device ordinal the rank uses (or would use) as `cuda:N`.
    pub device: String,
}

/// The ranks of one host, in rank order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRanks {
    pub host: String,
    pub ranks: Vec<usize>,
}

pub use crate::runtime::hostname;

/// The device this rank would use under `cfg`, without opening it: `cpu`, or `cuda:N` with
/// N = local rank mod the devices it sees (the CUDA backend's own rule,
/// [`device_for_local_rank`]), counted by the driver, else from `CUDA_VISIBLE_DEVICES` (all of
/// the node's GPUs when the job script leaves it alone, as `slurm/train-gpu.sbatch` does),
/// else the local rank itself.
pub fn planned_device(cfg: &Config, local_rank: usize) -> String {
    match cfg.train.backend {
        BackendKind::Cpu => "cpu".into(),
        BackendKind::Cuda => {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES")
                .ok()
                .map(|v| v.split(',').filter(|s| !s.trim().is_empty()).count())
                .filter(|&n| n > 0);
            let count = crate::backend::cuda::device_count()
                .ok()
                .filter(|&n| n > 0)
                .or(visible)
                .unwrap_or(local_rank + 1);
            format!("cuda:{}", device_for_local_rank(local_rank, count))
        }
    }
}

/// Every rank's place, in rank order, on every rank. Collective over the world.
pub fn gather(rt: &Runtime, grid: Grid, threads: usize, device: &str) -> Result<Vec<RankPlace>> {
    let mut name = [0u8; HOST_BYTES];
    let host = hostname();
    let n = host.len().min(HOST_BYTES);
    name[..n].copy_from_slice(&host.as_bytes()[..n]);
    let mut dev = [0u8; 32];
    let d = device.len().min(dev.len());
    dev[..d].copy_from_slice(&device.as_bytes()[..d]);
    let nums = [rt.local_rank as u64, rt.local_size as u64, threads as u64];
    let w = rt.world.size() as usize;
    let mut names = vec![0u8; HOST_BYTES * w];
    let mut devs = vec![0u8; 32 * w];
    let mut all = vec![0u64; 3 * w];
    rt.world.all_gather_into(&name[..], &mut names[..]);
    rt.world.all_gather_into(&dev[..], &mut devs[..]);
    rt.world.all_gather_into(&nums[..], &mut all[..]);
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Ok((0..w)
        .map(|r| {
            let c = grid.coords(r);
            RankPlace {
                rank: r,
                host: text(&names[r * HOST_BYTES..(r + 1) * HOST_BYTES]),
                local_rank: all[3 * r] as usize,
                local_size: all[3 * r + 1] as usize,
                dp: c.dp,
                tp: c.tp,
                pp: c.pp,
                threads: all[3 * r + 2] as usize,
                device: text(&devs[r * 32..(r + 1) * 32]),
            }
        })
        .collect())
}

/// Hosts in order of their first rank, each with its ranks.
pub fn hosts(places: &[RankPlace]) -> Vec<HostRanks> {
    let mut out: Vec<HostRanks> = Vec::new();
    for p in places {
        match out.iter_mut().find(|h| h.host == p.host) {
            Some(h) => h.ranks.push(p.rank),
            None => out.push(HostRanks {
                host: p.host.clone(),
                ranks: vec![p.rank],
            }),
        }
    }
    out
}

/// One line per host for the start-up log: `host ftnode1: 2 ranks [0, 1], (dp,tp,pp) (0,0,0)
/// (0,1,0), 1 thread(s) each, cpu`.
pub fn host_lines(places: &[RankPlace]) -> Vec<String> {
    hosts(places)
        .iter()
        .map(|h| {
            let ps: Vec<&RankPlace> = h.ranks.iter().map(|&r| &places[r]).collect();
            let coords: Vec<String> = ps
                .iter()
                .map(|p| format!("({},{},{})", p.dp, p.tp, p.pp))
                .collect();
            let devs: Vec<&str> = ps.iter().map(|p| p.device.as_str()).collect();
            format!(
                "host {}: {} rank(s) {:?}, (dp,tp,pp) {}, threads {:?}, devices {}",
                h.host,
                ps.len(),
                h.ranks,
                coords.join(" "),
                ps.iter().map(|p| p.threads).collect::<Vec<_>>(),
                devs.join(" ")
            )
        })
        .collect()
}

/// Launcher variables recorded in `run.json` (Slurm's, when present).
fn launcher() -> serde_json::Value {
    let keys = [
        "SLURM_JOB_ID",
        "SLURM_JOB_NODELIST",
        "SLURM_NNODES",
        "SLURM_NTASKS",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_CPUS_PER_TASK",
        "SLURM_RESTART_COUNT",
        "SLURM_JOB_PARTITION",
    ];
    let m: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?.into())))
        .collect();
    serde_json::Value::Object(m)
}

/// The run record: grid, hosts and every rank's place, threads, the batch shape, the config
/// (TOML text), the build's git commit, world size and node count.
pub fn run_record(cfg: &Config, grid: Grid, places: &[RankPlace]) -> Result<serde_json::Value> {
    let t = &cfg.train;
    let hs = hosts(places);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(serde_json::json!({
        "ferrotron_version": env!("CARGO_PKG_VERSION"),
        "git_commit": GIT_COMMIT,
        "started_unix": started,
        "world": grid.world(),
        "nodes": hs.len(),
        "grid": { "dp": grid.dp, "tp": grid.tp, "pp": grid.pp },
        "threads_per_rank": places.first().map_or(0, |p| p.threads),
        "backend": format!("{:?}", t.backend).to_lowercase(),
        "global_batch_size": t.global_batch_size,
        "micro_batch_size": t.micro_batch_size,
        "seq_len": t.seq_len,
        "tokens_per_step": t.global_batch_size * t.seq_len,
        "steps": t.steps,
        "launcher": launcher(),
        "hosts": hs,
        "ranks": places,
        "config": cfg.to_toml()?,
    }))
}

/// Writes `record` to `<out_dir>/run.json` (through a temporary file and a rename).
pub fn write_run_json(out_dir: &Path, record: &serde_json::Value) -> Result<PathBuf> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let path = out_dir.join("run.json");
    let tmp = out_dir.join("run.json.tmp");
    let text = serde_json::to_string_pretty(record)? + "\n";
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(rank: usize, host: &str, local_rank: usize) -> RankPlace {
        RankPlace {
            rank,
            host: host.into(),
            local_rank,
            local_size: 2,
            dp: rank / 2,
            tp: rank % 2,
            pp: 0,
            threads: 1,
            device: "cpu".into(),
        }
    }

    #[test]
    fn hosts_group_ranks_in_order_of_first_rank() {
        let ps = [place(0, "b", 0), place(1, "b", 1), place(2, "a", 0)];
        let hs = hosts(&ps);
        assert_eq!(hs.len(), 2);
        assert_eq!(
            (hs[0].host.as_str(), hs[0].ranks.clone()),
            ("b", vec![0, 1])
        );
        assert_eq!((hs[1].host.as_str(), hs[1].ranks.clone()), ("a", vec![2]));
        let lines = host_lines(&ps);
        assert_eq!(
            lines[0],
            "host b: 2 rank(s) [0, 1], (dp,tp,pp) (0,0,0) (0,1,0), threads [1, 1], devices cpu cpu"
        );
    }

    #[test]
    fn devices_wrap_over_the_visible_ones() {
        let got: Vec<usize> = (0..6).map(|l| device_for_local_rank(l, 4)).collect();
        assert_eq!(got, [0, 1, 2, 3, 0, 1]);
        assert_eq!(device_for_local_rank(3, 0), 0);
    }

    #[test]
    fn hostname_is_not_empty() {
        assert!(!hostname().is_empty());
    }
}
