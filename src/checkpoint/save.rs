//! Saving checkpoints: a host snapshot of one rank's state, written by a background thread
//! while training goes on, made visible only when every rank has finished.
//!
//! Protocol for step N (all MPI calls on the training thread; the writer thread only writes):
//! 1. Finish the previous save if one is pending (never two at once).
//! 2. Rank 0 removes an incomplete `step_N` left by a crash and creates the directory; a
//!    barrier (an all-reduce on the metrics communicator, not counted in the step's traffic).
//! 3. Each writer copies its state to host memory (the only stall) and a thread writes its
//!    files, each as `<name>.tmp`, fsynced and renamed.
//! 4. At every later step boundary the ranks agree (one small all-reduce) whether all writers
//!    are done, and whether a stop signal arrived anywhere.
//! 5. When all are done: one more all-reduce of failure flags; then rank 0 writes `COMPLETE`
//!    (fsynced), atomically replaces `latest`, and deletes all but the newest
//!    `checkpoint.keep_last` complete checkpoints (and incomplete ones older than the new one).
//!
//! A crash at any moment leaves the previous checkpoint complete and `latest` pointing at it.
//!
//! A failure in step 2, 3 or 5 on any rank (a full or read-only disk, a lost mount) is agreed
//! like the rest: the lowest failing rank prints the cause (file and error), rank 0 removes the
//! partial step directory, the previous checkpoint and `latest` stay as they were, and
//! `checkpoint.on_error` decides: every rank stops with exit 1, or the run goes on without this
//! checkpoint.

use super::format::{
    atomic_write, optim_file, placement, shard_file, step_dir_name, sync_dir, write_tensor,
    write_u64_attr,
};
use super::meta::Meta;
use crate::comm::mpi::MpiComm;
use crate::model::gpt2::ParamLayout;
use crate::parallel::shard::StageLayout;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

/// Optimizer state in a snapshot.
pub enum OptimState {
    /// The whole local state (no ZeRO): written with the model by dp rank 0.
    Full {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    /// A ZeRO-1 shard: elements `lo .. lo + m.len()` of the flat local buffer.
    Zero {
        lo: usize,
        m: Vec<f32>,
        v: Vec<f32>,
    },
    None,
}

/// One rank's part of a checkpoint, in host memory.
pub struct Snapshot {
    pub step: usize,
    pub layout: StageLayout,
    /// The grid's padded global layout, and the real vocabulary size.
    pub global: ParamLayout,
    pub vocab: usize,
    pub dp_rank: usize,
    /// Local parameters (dp rank 0 only: the replicas are identical).
    pub params: Option<Vec<f32>>,
    pub optim: OptimState,
    /// World rank 0 writes `meta.h5`.
    pub meta: Option<Meta>,
}

/// Test hook: `FERROTRON_TEST_SAVE_DELAY=<step>:<ms>` makes the writers of step `<step>`
/// sleep `<ms>` after their first file (so tests can kill a job mid-save).
fn test_delay(step: usize) -> Option<std::time::Duration> {
    let spec = std::env::var("FERROTRON_TEST_SAVE_DELAY").ok()?;
    let (s, ms) = spec.split_once(':')?;
    let ms: u64 = ms.parse().ok()?;
    (s.parse::<usize>().ok()? == step).then(|| std::time::Duration::from_millis(ms))
}

impl Snapshot {
    /// Writes this rank's files into `dir` (the step directory, which exists); returns the
    /// bytes written.
    pub fn write(&self, dir: &Path) -> Result<u64> {
        let (s, t) = (self.layout.stage, self.layout.tp_rank);
        let mut names: Vec<String> = Vec::new();
        let mut done = |name: String| {
            if names.is_empty() {
                if let Some(d) = test_delay(self.step) {
                    std::thread::sleep(d);
                }
            }
            names.push(name);
        };
        if let Some(meta) = &self.meta {
            atomic_write(&dir.join("meta.h5"), |p| meta.write(p))?;
            done("meta.h5".into());
        }
        if let Some(params) = &self.params {
            let full = match &self.optim {
                OptimState::Full { m, v } => Some((m.as_slice(), v.as_slice())),
                _ => None,
            };
            let name = shard_file(s, t);
            atomic_write(&dir.join(&name), |p| self.write_shard(p, params, full))?;
            done(name);
        }
        if let OptimState::Zero { lo, m, v } = &self.optim {
            let name = optim_file(s, t, self.dp_rank);
            atomic_write(&dir.join(&name), |p| self.write_zero(p, *lo, m, v))?;
            done(name);
        }
        Ok(names
            .iter()
            .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
            .map(|m| m.len())
            .sum())
    }

    /// `shard_pp<s>_tp<t>.h5`: `/model` and, without ZeRO, `/optim`.
    fn write_shard(
        &self,
        path: &Path,
        params: &[f32],
        optim: Option<(&[f32], &[f32])>,
    ) -> Result<()> {
        let ly = &self.layout;
        let f = hdf5::File::create(path)?;
        write_u64_attr(&f, "pp", ly.stage as u64)?;
        write_u64_attr(&f, "tp", ly.tp_rank as u64)?;
        // All of /model, then all m, then all v: a reader takes one kind at a time, so each
        // pass over the file is sequential.
        let mut parts = vec![("model", params, "")];
        if let Some((m, v)) = optim {
            parts.extend([("optim", m, "/m"), ("optim", v, "/v")]);
        }
        for (group, buf, leaf) in parts {
            for (i, e) in ly.entries.iter().enumerate() {
                let p = placement(ly, i, &self.global, self.vocab);
                if !ly.counted[i] || p.is_empty() {
                    continue;
                }
                let data = &buf[e.offset..e.offset + p.len()];
                let path = format!("{group}/{}{leaf}", e.name);
                write_tensor(&f, &path, data, &p.shape, &p, None)?;
            }
        }
        f.flush()?;
        Ok(())
    }

    /// `optim_pp<s>_tp<t>_dp<d>.h5`: the pieces of each stored tensor inside this rank's
    /// ZeRO-1 range `lo .. lo + m.len()`.
    fn write_zero(&self, path: &Path, lo: usize, m: &[f32], v: &[f32]) -> Result<()> {
        let ly = &self.layout;
        let hi = lo + m.len();
        let f = hdf5::File::create(path)?;
        write_u64_attr(&f, "dp", self.dp_rank as u64)?;
        for (i, e) in ly.entries.iter().enumerate() {
            let p = placement(ly, i, &self.global, self.vocab);
            let (a, b) = (e.offset.max(lo), (e.offset + p.len()).min(hi));
            if !ly.counted[i] || a >= b {
                continue;
            }
            let range = Some([a - e.offset, b - e.offset]);
            let (mm, vv) = (&m[a - lo..b - lo], &v[a - lo..b - lo]);
            write_tensor(&f, &format!("optim/{}/m", e.name), mm, &[b - a], &p, range)?;
            write_tensor(&f, &format!("optim/{}/v", e.name), vv, &[b - a], &p, range)?;
        }
        f.flush()?;
        Ok(())
    }
}

/// What the `[checkpoint]` section asks for.
#[derive(Debug, Clone)]
pub struct SavePolicy {
    pub dir: PathBuf,
    pub every: usize,
    pub keep_last: usize,
    pub background: bool,
    /// A save that fails on any rank (full or read-only disk, ...): stop the run (false) or
    /// warn, remove the partial step directory and train on (true).
    pub continue_on_error: bool,
}

struct InFlight {
    step: usize,
    /// Seconds the training thread spent on this save before going on.
    stall_s: f64,
    /// (bytes, seconds, the snapshot back for reuse) of this rank's writer.
    writer: JoinHandle<Result<(u64, f64, Snapshot)>>,
}

/// A finished save, as reported in the metrics (rank 0).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaveReport {
    pub step: usize,
    pub dir: PathBuf,
    /// Bytes of all files, summed over ranks.
    pub bytes: u64,
    /// Time of the slowest rank's writer (all files of that rank, fsync included).
    pub write_s: f64,
    /// Time the training thread was held (host copies, the barrier; the whole save when not in
    /// the background).
    pub stall_s: f64,
}

/// Saves checkpoints under one directory, one at a time.
pub struct Checkpointer {
    policy: SavePolicy,
    rank: usize,
    pending: Option<InFlight>,
    /// Finished saves not yet written to the metrics (rank 0).
    pub reports: Vec<SaveReport>,
    /// The last snapshot, whose host buffers the next one reuses (no new page faults).
    spare: Option<Snapshot>,
    /// The rank's flight recorder: waiting for this rank's own writer is progress.
    flight: Option<std::sync::Arc<crate::comm::flight::FlightRecorder>>,
}

impl Checkpointer {
    pub fn new(policy: SavePolicy, rank: usize) -> Self {
        Self {
            policy,
            rank,
            pending: None,
            reports: Vec::new(),
            spare: None,
            flight: None,
        }
    }

    /// Beats `rec` while waiting for this rank's writer (a long save is not a hang).
    pub fn with_flight(mut self, rec: std::sync::Arc<crate::comm::flight::FlightRecorder>) -> Self {
        self.flight = Some(rec);
        self
    }

    /// The previous snapshot (once its save finished), to refill instead of allocating.
    pub fn take_spare(&mut self) -> Option<Snapshot> {
        self.spare.take()
    }

    /// Whether a save is still being written.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether to save after `steps_done` steps (`last`: the run's final step).
    pub fn due(&self, steps_done: usize, last: bool) -> bool {
        last || (self.policy.every > 0 && steps_done.is_multiple_of(self.policy.every))
    }

    /// Collective: starts saving `snap` (taken after `snap.step` steps) — `since` is when the
    /// training thread began taking the snapshot (for the stall figure).
    pub fn start(&mut self, snap: Snapshot, comm: &MpiComm, since: Instant) -> Result<()> {
        self.finish(comm)?;
        let dir = self.policy.dir.join(step_dir_name(snap.step));
        let prepared = if self.rank == 0 {
            prepare_dir(&dir)
        } else {
            Ok(())
        };
        // Also the barrier: the directory exists before any writer starts.
        let prepared = prepared.with_context(|| format!("preparing checkpoint {}", dir.display()));
        if self.agree_failure(comm, prepared, &dir)? {
            return Ok(()); // on_error = continue: no save this time
        }
        let step = snap.step;
        let writer = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                let t0 = Instant::now();
                snap.write(&dir)
                    .map(|b| (b, t0.elapsed().as_secs_f64(), snap))
            })
            .context("cannot start the checkpoint writer thread")?;
        self.pending = Some(InFlight {
            step,
            stall_s: 0.0,
            writer,
        });
        if !self.policy.background {
            self.finish_with_stall(comm, Some(since))?;
        } else if let Some(p) = self.pending.as_mut() {
            p.stall_s = since.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Collective, once per step: agrees whether a stop was requested on any rank (returned)
    /// and completes the pending save if every writer is done.
    pub fn poll(&mut self, comm: &MpiComm, stop: bool) -> Result<bool> {
        let done = self.pending.as_ref().is_none_or(|p| p.writer.is_finished());
        let mut v = [f64::from(u8::from(stop)), f64::from(u8::from(done))];
        comm.all_reduce_sum_f64_uncounted(&mut v);
        if self.pending.is_some() && v[1] as usize == comm_size(comm) {
            self.finish(comm)?;
        }
        Ok(v[0] > 0.0)
    }

    /// Collective: waits for the pending save, then marks it complete (rank 0).
    pub fn finish(&mut self, comm: &MpiComm) -> Result<()> {
        self.finish_with_stall(comm, None)
    }

    /// [`Self::finish`]; with `since`, the training thread waited for the whole save.
    fn finish_with_stall(&mut self, comm: &MpiComm, since: Option<Instant>) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        while !p.writer.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if let Some(f) = &self.flight {
                f.beat();
            }
        }
        let res = p
            .writer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the checkpoint writer thread panicked")));
        // Per-rank slots [failed, bytes, seconds]; the sum over ranks gathers them.
        let mut v = vec![0.0f64; 3 * comm_size(comm)];
        let (b, secs) = res.as_ref().map_or((0, 0.0), |x| (x.0, x.1));
        let mine = [f64::from(u8::from(res.is_err())), b as f64, secs];
        v[3 * self.rank..3 * self.rank + 3].copy_from_slice(&mine);
        comm.all_reduce_sum_f64_uncounted(&mut v);
        let dir = self.policy.dir.join(step_dir_name(p.step));
        let first_failed = v.chunks(3).position(|c| c[0] > 0.0);
        let res = match res {
            Ok((_, _, snap)) => {
                self.spare = Some(snap);
                Ok(())
            }
            Err(e) => Err(e.context(format!("saving checkpoint {}", dir.display()))),
        };
        if let Some(first) = first_failed {
            return self.failed(comm_size(comm), first, res, &dir);
        }
        let completed = if self.rank == 0 {
            self.complete(&dir, p.step)
                .with_context(|| format!("completing checkpoint {}", dir.display()))
        } else {
            Ok(())
        };
        if self.agree_failure(comm, completed, &dir)? {
            return Ok(());
        }
        if self.rank == 0 {
            let r = SaveReport {
                step: p.step,
                bytes: v.chunks(3).map(|c| c[1] as u64).sum(),
                write_s: v.chunks(3).map(|c| c[2]).fold(0.0, f64::max),
                stall_s: since.map_or(p.stall_s, |t| t.elapsed().as_secs_f64()),
                dir,
            };
            log::info!(
                "checkpoint {} complete: {:.1} MB written in {:.2} s ({:.0} MB/s); training held {:.3} s",
                r.dir.display(),
                r.bytes as f64 / 1e6,
                r.write_s,
                r.bytes as f64 / 1e6 / r.write_s.max(1e-9),
                r.stall_s
            );
            self.reports.push(r);
        }
        Ok(())
    }

    /// Collective: whether any rank's `res` failed. If so, see [`Self::failed`]: `Ok(true)`
    /// (on_error = continue) or the agreed error.
    fn agree_failure(&mut self, comm: &MpiComm, res: Result<()>, dir: &Path) -> Result<bool> {
        let n = comm_size(comm);
        let mut v = vec![0.0f64; n];
        v[self.rank] = f64::from(u8::from(res.is_err()));
        comm.all_reduce_sum_f64_uncounted(&mut v);
        match v.iter().position(|&x| x > 0.0) {
            Some(first) => self.failed(n, first, res, dir).map(|()| true),
            None => Ok(false),
        }
    }

    /// A save failed on some ranks, `first` the lowest: it prints the cause; rank 0 removes the
    /// partial step directory. Stop: every rank returns the agreed failure (exit 1, no abort);
    /// continue: Ok, training goes on.
    fn failed(&mut self, size: usize, first: usize, res: Result<()>, dir: &Path) -> Result<()> {
        let go_on = self.policy.continue_on_error;
        if self.rank == first {
            if let Err(e) = &res {
                if go_on {
                    log::warn!("{e:#}; going on without this checkpoint (checkpoint.on_error = \"continue\")");
                } else {
                    crate::runtime::report(self.rank, size, e);
                }
            }
        }
        if self.rank == 0 && dir.exists() && !dir.join("COMPLETE").exists() {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                log::warn!("could not remove the partial {}: {e}", dir.display());
            }
        }
        if go_on {
            Ok(())
        } else {
            Err(crate::runtime::AgreedFailure.into())
        }
    }

    /// Rank 0: `COMPLETE`, then `latest`, then pruning.
    fn complete(&self, dir: &Path, step: usize) -> Result<()> {
        let meta = Meta::read(dir)?;
        let list = meta.files().join("\n") + "\n";
        atomic_write(&dir.join("COMPLETE"), |p| Ok(std::fs::write(p, &list)?))?;
        let name = step_dir_name(step);
        atomic_write(&self.policy.dir.join("latest"), |p| {
            Ok(std::fs::write(p, format!("{name}\n"))?)
        })?;
        prune(&self.policy.dir, step, self.policy.keep_last)
    }
}

fn comm_size(comm: &MpiComm) -> usize {
    use crate::comm::Communicator;
    comm.size()
}

/// Rank 0, before the writers: a fresh, empty step directory.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if dir.join("COMPLETE").exists() {
            bail!(
                "{} already holds a complete checkpoint; refusing to overwrite it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    sync_dir(dir.parent().unwrap_or(Path::new(".")))
}

/// Step directories under `root` as (step, path, complete), oldest first.
pub fn list_steps(root: &Path) -> Result<Vec<(usize, PathBuf, bool)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().to_string();
        let Some(n) = name
            .strip_prefix("step_")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let p = ent.path();
        if p.is_dir() {
            let complete = p.join("COMPLETE").exists();
            out.push((n, p, complete));
        }
    }
    out.sort_by_key(|x| x.0);
    Ok(out)
}

/// Keeps the newest `keep` complete checkpoints; removes older complete ones and incomplete
/// ones older than `newest`.
fn prune(root: &Path, newest: usize, keep: usize) -> Result<()> {
    let steps = list_steps(root)?;
    let complete: Vec<_> = steps.iter().filter(|s| s.2).collect();
    let cut = complete.len().saturating_sub(keep.max(1));
    for (n, p, _) in &complete[..cut] {
        if *n != newest {
            std::fs::remove_dir_all(p).with_context(|| format!("removing old {}", p.display()))?;
        }
    }
    for (n, p, c) in &steps {
        if !c && *n < newest {
            std::fs::remove_dir_all(p)
                .with_context(|| format!("removing stale {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(root: &Path, step: usize, complete: bool) {
        let d = root.join(step_dir_name(step));
        std::fs::create_dir_all(&d).unwrap();
        if complete {
            std::fs::write(d.join("COMPLETE"), "meta.h5\n").unwrap();
        }
    }

    fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// Pruning keeps the newest K complete checkpoints, never the one just written, and drops
    /// incomplete ones older than it (a crash's leftovers) but not newer ones.
    #[test]
    fn prune_keeps_the_newest_complete() {
        let root = std::env::temp_dir().join(format!("ferrotron-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (s, c) in [
            (2, true),
            (4, false),
            (6, true),
            (8, true),
            (10, true),
            (12, false),
        ] {
            mk(&root, s, c);
        }
        prune(&root, 10, 2).unwrap();
        assert_eq!(
            names(&root),
            ["step_00000008", "step_00000010", "step_00000012"]
        );
        let steps = list_steps(&root).unwrap();
        assert_eq!(
            steps.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>(),
            [(8, true), (10, true), (12, false)]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A fresh step directory replaces an incomplete one but never a complete one.
    #[test]
    fn prepare_dir_never_overwrites_a_complete_checkpoint() {
        let root = std::env::temp_dir().join(format!("ferrotron-prep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        mk(&root, 3, false);
        std::fs::write(root.join(step_dir_name(3)).join("junk"), "x").unwrap();
        prepare_dir(&root.join(step_dir_name(3))).unwrap();
        assert!(names(&root.join(step_dir_name(3))).is_empty());
        mk(&root, 5, true);
        let e = prepare_dir(&root.join(step_dir_name(5))).unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
