//! One job per checkpoint directory: rank 0 of a training run holds `<checkpoint.dir>/LOCK`
//! (a JSON record of the owner: Slurm job id, host, pid, start time) from set-up to the end, so
//! two jobs pointed at one directory cannot interleave their saves.
//!
//! A second job finding the lock refuses to start, naming the owner. A lock is stale — taken
//! over with a warning — when its owner is the same Slurm job (a requeued job restarts with its
//! job id), or ran on this host and its process is gone, or cannot be read (a crash while it
//! was written). A lock from a live process, or from another host (whose processes cannot be
//! checked from here), is taken only with `ferrotron train --force-unlock`. The file is created
//! with `O_EXCL`, and removed when the run ends — also when it ends with an error; a killed
//! run leaves it behind for the rules above.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// File name of the lock inside the checkpoint directory.
pub const LOCK_FILE: &str = "LOCK";

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// `SLURM_JOB_ID` of the owner, if it ran under Slurm.
    pub job: Option<String>,
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch when it was taken.
    pub since: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Self {
        Self {
            job: std::env::var("SLURM_JOB_ID").ok().filter(|s| !s.is_empty()),
            host: crate::runtime::hostname(),
            pid: std::process::id(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn describe(&self) -> String {
        let job = self
            .job
            .as_deref()
            .map_or(String::new(), |j| format!("job {j}, "));
        format!(
            "{job}host {}, pid {}, since unix time {}",
            self.host, self.pid, self.since
        )
    }

    /// Why this lock may be taken over, if it may.
    fn stale(&self, me: &Owner) -> Option<String> {
        if self.job.is_some() && self.job == me.job {
            return Some(format!(
                "it belongs to this Slurm job ({}), requeued",
                me.job.as_deref().unwrap_or("")
            ));
        }
        if self.host == me.host && !pid_alive(self.pid) {
            return Some(format!("its process {} on this host is gone", self.pid));
        }
        None
    }
}

/// Whether a process with this pid runs on this host (a zombie — dead, not yet reaped — does
/// not count).
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(p, 0) };
    let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // /proc/<pid>/stat: "pid (comm) S ...", the state after the last ')'.
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            t.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false);
    exists && !zombie
}

/// A held lock; dropping it removes the file (if it is still ours).
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    owner: Owner,
}

impl DirLock {
    /// Takes the lock of checkpoint directory `dir` (created if missing). `force`: take over a
    /// lock that is not stale (`--force-unlock`).
    pub fn acquire(dir: &Path, force: bool) -> Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating checkpoint.dir {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let me = Owner::me();
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let text = serde_json::to_string(&me)? + "\n";
                    f.write_all(text.as_bytes())
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Self { path, owner: me });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating the lock {}", path.display()))
                }
            }
            let held: Option<Owner> = fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let why = match &held {
                None => Some("it cannot be read (written by a crashed run?)".to_string()),
                Some(o) => o.stale(&me),
            };
            match (why, force) {
                (Some(why), _) => log::warn!(
                    "taking over {} ({}): {why}",
                    path.display(),
                    held.as_ref().map_or("unreadable".into(), Owner::describe)
                ),
                (None, true) => log::warn!(
                    "--force-unlock: taking over {} held by {}",
                    path.display(),
                    held.as_ref().map_or(String::new(), Owner::describe)
                ),
                (None, false) => bail!(
                    "checkpoint.dir {} is in use by another run ({}); two runs must not save into \
                     one directory. If that run is gone, start with --force-unlock",
                    dir.display(),
                    held.as_ref().map_or(String::new(), Owner::describe)
                ),
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        bail!(
            "could not take {} (another run keeps taking it)",
            path.display()
        )
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let ours = fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<Owner>(&t).ok())
            .is_some_and(|o| o == self.owner);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrotron-lock-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn second_taker_is_refused_until_the_first_drops() {
        let d = dir("twice");
        let a = DirLock::acquire(&d, false).unwrap();
        let e = format!("{:#}", DirLock::acquire(&d, false).unwrap_err());
        assert!(
            e.contains("in use by another run")
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(a);
        assert!(!d.join(LOCK_FILE).exists());
        let _b = DirLock::acquire(&d, false).unwrap();
        fs::remove_dir_all(d).ok();
    }

    #[test]
    fn stale_and_foreign_locks() {
        let d = dir("stale");
        fs::create_dir_all(&d).unwrap();
        let mut dead = Owner::me();
        dead.job = None;
        dead.pid = 0x3fff_fff0; // above pid_max: no such process
        fs::write(d.join(LOCK_FILE), serde_json::to_string(&dead).unwrap()).unwrap();
        drop(DirLock::acquire(&d, false).unwrap()); // taken over: its process is gone
        let mut foreign = dead.clone();
        foreign.host = "some-other-host".into();
        fs::write(d.join(LOCK_FILE), serde_json::to_string(&foreign).unwrap()).unwrap();
        let e = format!("{:#}", DirLock::acquire(&d, false).unwrap_err());
        assert!(
            e.contains("host some-other-host") && e.contains("--force-unlock"),
            "{e}"
        );
        drop(DirLock::acquire(&d, true).unwrap());
        fs::write(d.join(LOCK_FILE), "{garbage").unwrap();
        drop(DirLock::acquire(&d, false).unwrap());
        fs::remove_dir_all(d).ok();
    }
}
