//! The flight recorder and the watchdog: what each rank's communication did last, and an end to
//! a job in which a rank stopped making progress.
//!
//! Every MPI operation of a group that has the recorder ([`MpiComm::set_flight`]) is recorded
//! when it starts and when it completes: the group, its sequence number in that group (the
//! same on every member for the same collective), the operation, the bytes, the start and end
//! times and the training step. The last [`CAPACITY`] records are kept in a ring. Completing an
//! operation, or the training loop marking a step ([`FlightRecorder::set_step`]), is progress.
//!
//! The [`Watchdog`] thread of a rank fires when the rank has made no progress for its timeout:
//! it logs the rank, step, phase and the oldest unfinished operation, writes
//! `<out_dir>/flight/rank<R>.jsonl` (a header line with the groups and their members, then one
//! line per record), and ends the process with exit 1, which makes `mpirun` or `srun
//! --kill-on-bad-exit` end the job. Every rank stuck behind the same missing partner fires at
//! about the same time, so `ferrotron diagnose <out_dir>` finds the files of all of them.
//!
//! [`MpiComm::set_flight`]: super::mpi::MpiComm::set_flight

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Records kept per rank.
pub const CAPACITY: usize = 4096;

/// One operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Index into the header's `groups`.
    pub group: usize,
    /// The operation's number within its group (1, 2, ...), the same on every member.
    pub seq: u64,
    pub op: String,
    pub bytes: u64,
    /// Seconds since the recorder started.
    pub start_s: f64,
    /// None while the operation has not completed.
    pub end_s: Option<f64>,
    /// The training step (1-based) it belongs to; 0 during set-up.
    pub step: u64,
}

/// A group as the header of a flight file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub name: String,
    /// World ranks, in group order.
    pub members: Vec<usize>,
}

/// The first line of a flight file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub rank: usize,
    pub host: String,
    pub step: u64,
    pub phase: String,
    /// Seconds without progress when the file was written.
    pub idle_s: f64,
    /// The watchdog's timeout then (0 when written otherwise). `idle_s` well beyond it means
    /// the rank itself did not run for that long (stopped, swapped out, starved).
    #[serde(default)]
    pub timeout_s: f64,
    /// The longest time the watchdog thread saw itself not run (a wake-up that came this much
    /// later than asked): a stopped, swapped-out or starved process.
    #[serde(default)]
    pub frozen_s: f64,
    pub reason: String,
    pub groups: Vec<GroupInfo>,
}

struct Ring {
    next: u64,
    /// (id, record), oldest first.
    entries: VecDeque<(u64, Record)>,
}

/// One rank's recorder (shared by its communicators and its watchdog).
pub struct FlightRecorder {
    start: Instant,
    ring: Mutex<Ring>,
    groups: Mutex<Vec<GroupInfo>>,
    /// Milliseconds since `start` of the last progress.
    beat_ms: AtomicU64,
    step: AtomicU64,
    phase: Mutex<&'static str>,
    /// Longest late wake-up of the watchdog, in milliseconds (see [`Header::frozen_s`]).
    frozen_ms: AtomicU64,
}

impl Default for FlightRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl FlightRecorder {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ring: Mutex::new(Ring {
                next: 0,
                entries: VecDeque::with_capacity(CAPACITY),
            }),
            groups: Mutex::new(Vec::new()),
            beat_ms: AtomicU64::new(0),
            step: AtomicU64::new(0),
            phase: Mutex::new("set-up"),
            frozen_ms: AtomicU64::new(0),
        }
    }

    fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Registers a group; returns its index for [`Self::begin`].
    pub fn register_group(&self, name: &str, members: Vec<usize>) -> usize {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.push(GroupInfo {
            name: name.to_string(),
            members,
        });
        g.len() - 1
    }

    /// An operation starts; returns its id for [`Self::end`].
    pub fn begin(&self, group: usize, seq: u64, op: &str, bytes: usize) -> u64 {
        let rec = Record {
            group,
            seq,
            op: op.to_string(),
            bytes: bytes as u64,
            start_s: self.now_s(),
            end_s: None,
            step: self.step.load(Ordering::Relaxed),
        };
        let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let id = r.next;
        r.next += 1;
        if r.entries.len() == CAPACITY {
            r.entries.pop_front();
        }
        r.entries.push_back((id, rec));
        id
    }

    /// Operation `id` completed (progress).
    pub fn end(&self, id: u64) {
        let now = self.now_s();
        {
            let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, rec)) = r.entries.iter_mut().rev().find(|(i, _)| *i == id) {
                rec.end_s = Some(now);
            }
        }
        self.beat();
    }

    /// Progress without an operation.
    pub fn beat(&self) {
        self.beat_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The training loop is at `step` (1-based), doing `phase` (progress).
    pub fn set_step(&self, step: u64, phase: &'static str) {
        self.step.store(step, Ordering::Relaxed);
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.beat();
    }

    /// Seconds since the last progress.
    pub fn idle_s(&self) -> f64 {
        let now = self.start.elapsed().as_millis() as u64;
        now.saturating_sub(self.beat_ms.load(Ordering::Relaxed)) as f64 / 1e3
    }

    /// The oldest operation that has not completed, with its group.
    pub fn pending(&self) -> Option<(Record, GroupInfo)> {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rec = r.entries.iter().find(|(_, e)| e.end_s.is_none())?.1.clone();
        let g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        Some((rec.clone(), g.get(rec.group)?.clone()))
    }

    /// Writes the header and every kept record to `path` (JSON lines).
    pub fn dump(&self, path: &Path, rank: usize, reason: &str, timeout_s: f64) -> Result<()> {
        let header = Header {
            rank,
            timeout_s,
            frozen_s: self.frozen_ms.load(Ordering::Relaxed) as f64 / 1e3,
            host: crate::runtime::hostname(),
            step: self.step.load(Ordering::Relaxed),
            phase: self
                .phase
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .to_string(),
            idle_s: self.idle_s(),
            reason: reason.to_string(),
            groups: self
                .groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut text = serde_json::to_string(&header)? + "\n";
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        for (_, rec) in &r.entries {
            text += &(serde_json::to_string(rec)? + "\n");
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Where rank `rank` writes its flight file under the run folder.
pub fn flight_path(out_dir: &Path, rank: usize) -> PathBuf {
    out_dir.join("flight").join(format!("rank{rank}.jsonl"))
}

/// A rank's watchdog thread; stops when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    /// The timeout in milliseconds (0: off), adjustable while running.
    timeout_ms: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `rec` with `timeout_s` (0 = off). On firing it writes
    /// [`flight_path`]`(out_dir, rank)` and ends the process with exit 1.
    pub fn start(
        rec: Arc<FlightRecorder>,
        timeout_s: f64,
        out_dir: PathBuf,
        rank: usize,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let timeout_ms = Arc::new(AtomicU64::new((timeout_s * 1e3) as u64));
        let (s, t) = (stop.clone(), timeout_ms.clone());
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&rec, &s, &t, &out_dir, rank))
            .context("starting the watchdog thread")?;
        Ok(Self {
            stop,
            timeout_ms,
            thread: Some(thread),
        })
    }

    /// Changes the timeout (0 = off).
    pub fn set_timeout(&self, timeout_s: f64) {
        self.timeout_ms
            .store((timeout_s * 1e3) as u64, Ordering::Relaxed);
    }

    /// The current timeout in seconds (0 = off).
    pub fn timeout_s(&self) -> f64 {
        self.timeout_ms.load(Ordering::Relaxed) as f64 / 1e3
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(
    rec: &FlightRecorder,
    stop: &AtomicBool,
    timeout_ms: &AtomicU64,
    out_dir: &Path,
    rank: usize,
) {
    const NAP: Duration = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        std::thread::sleep(NAP);
        let late = t0.elapsed().saturating_sub(NAP).as_millis() as u64;
        rec.frozen_ms.fetch_max(late, Ordering::Relaxed);
        let t = timeout_ms.load(Ordering::Relaxed) as f64 / 1e3;
        let idle = rec.idle_s();
        if t <= 0.0 || idle < t {
            continue;
        }
        let step = rec.step.load(Ordering::Relaxed);
        let phase = *rec.phase.lock().unwrap_or_else(|e| e.into_inner());
        let pending = match rec.pending() {
            Some((r, g)) => format!(
                "waiting in {} #{} on group {} {:?} ({} bytes) for {:.0} s",
                r.op,
                r.seq,
                g.name,
                g.members,
                r.bytes,
                rec.now_s() - r.start_s
            ),
            None => "not in any communication".to_string(),
        };
        let path = flight_path(out_dir, rank);
        let reason = format!(
            "watchdog: rank {rank} made no progress for {idle:.0} s (runtime.watchdog_s = {t}) at step {step} ({phase}), {pending}"
        );
        let written = match rec.dump(&path, rank, &reason, t) {
            Ok(()) => format!("flight record: {}", path.display()),
            Err(e) => format!("could not write the flight record: {e:#}"),
        };
        eprintln!("[rank {rank}] error: {reason}; {written}; ending the job (`ferrotron diagnose {}` compares the ranks)", out_dir.display());
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process at once, without running destructors or atexit
        // handlers (which could block on the stuck MPI state); the launcher sees exit 1.
        unsafe { libc::_exit(crate::runtime::EXIT_FAILURE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_and_finds_the_pending_one() {
        let r = FlightRecorder::new();
        let g = r.register_group("dp", vec![1, 5]);
        for i in 0..(CAPACITY as u64 + 10) {
            let id = r.begin(g, i + 1, "all_reduce", 64);
            r.end(id);
        }
        let open = r.begin(g, 9999, "reduce_scatter", 8);
        let (p, info) = r.pending().unwrap();
        assert_eq!(
            (p.seq, p.op.as_str(), info.members.clone()),
            (9999, "reduce_scatter", vec![1, 5])
        );
        let path =
            std::env::temp_dir().join(format!("ferrotron-flight-{}.jsonl", std::process::id()));
        r.dump(&path, 3, "test", 0.0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1 + CAPACITY);
        let h: Header = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!((h.rank, h.groups[0].name.as_str()), (3, "dp"));
        r.end(open);
        assert!(r.pending().is_none());
        std::fs::remove_file(path).unwrap();
    }
}
