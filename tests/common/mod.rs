//! Shared helpers for the integration tests: the built binary, per-test scratch folders, a real
//! corpus (GPT-2 BPE over Debian's `fortunes` text), small configs, and running commands (also
//! under mpirun) inside a hard timeout so that a hang fails the test instead of stalling CI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const FERROTRON: &str = env!("CARGO_BIN_EXE_ferrotron");
pub const FORTUNES: &str = "/usr/share/games/fortunes";

/// Output of a finished command.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    /// Failed with a message containing `needle`, exit code non-zero, no panic, no hang.
    pub fn assert_clean_failure(&self, needle: &str) {
        let all = self.all();
        assert_ne!(self.code, 124, "command hung (timeout):\n{all}");
        assert_ne!(self.code, 0, "command should have failed:\n{all}");
        assert!(
            all.contains(needle),
            "message should mention {needle:?}:\n{all}"
        );
        assert!(
            !all.contains("panicked") && !all.contains("stack backtrace"),
            "panic:\n{all}"
        );
        assert!(all.contains("error:"), "no error line:\n{all}");
    }
    pub fn assert_ok(&self) {
        assert_eq!(self.code, 0, "command failed:\n{}", self.all());
    }
}

/// A fresh scratch folder for one test (tests run in parallel), removed when the test passes
/// and kept (for a look at its logs) when it fails.
pub fn scratch(name: &str) -> Scratch {
    Scratch(fresh_dir(name))
}

/// A fresh folder under the temp dir for this test process, left in place.
fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotron-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test's scratch folder; derefs to its path.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's folder {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The environment every test command gets: MPI as root, oversubscription, no CMA (containers),
/// one thread per rank, short panics; then `envs`.
pub fn mpi_env(c: &mut Command, envs: &[(&str, &str)]) {
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RUST_BACKTRACE", "0")
        .env("OMP_NUM_THREADS", "1");
    for (k, v) in envs {
        c.env(k, v);
    }
}

/// Relative L2 difference ‖a − b‖ / ‖b‖.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
    d / n.max(1e-30)
}

/// Run `cmd args` with environment for MPI as root, killed after `secs`.
pub fn run_timeout(secs: u64, cmd: &str, args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> Out {
    let mut c = Command::new("timeout");
    c.arg("--kill-after=10")
        .arg(secs.to_string())
        .arg(cmd)
        .args(args)
        .current_dir(cwd);
    mpi_env(&mut c, envs);
    let o = c.output().expect("cannot run timeout(1)");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// Run the ferrotron binary directly (a 1-rank world).
pub fn ferrotron(args: &[&str], cwd: &Path) -> Out {
    run_timeout(300, FERROTRON, args, &[], cwd)
}

/// Run the binary on `np` ranks through mpirun.
pub fn mpirun(np: usize, args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> Out {
    let np = np.to_string();
    let mut a = vec!["-np", np.as_str(), FERROTRON];
    a.extend_from_slice(args);
    run_timeout(180, "mpirun", &a, envs, cwd)
}

/// Real text → GPT-2 BPE shards, prepared once per test binary from a few fortunes files.
pub fn corpus() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // $FERROTRON_TEST_FORTUNES: the same files elsewhere (e.g. carried to the GPU machine).
        let dir = std::env::var("FERROTRON_TEST_FORTUNES").unwrap_or_else(|_| FORTUNES.into());
        let src = Path::new(&dir);
        assert!(
            src.is_dir(),
            "{dir} is missing: run scripts/install-deps.sh (Debian package `fortunes`)"
        );
        // Shared by the whole test process, so it outlives every test: not removed (a few MB).
        let root = fresh_dir("corpus");
        let text = root.join("text");
        std::fs::create_dir_all(&text).unwrap();
        for f in ["fortunes", "literature", "riddles", "science", "wisdom"] {
            std::fs::copy(src.join(f), text.join(f)).unwrap();
        }
        let out = root.join("shards");
        let o = ferrotron(
            &[
                "prepare-data",
                "--input",
                text.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &root,
        );
        o.assert_ok();
        out
    })
}

/// A small GPT-2 config over the test corpus, written into `dir/config.toml`.
pub fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let c = corpus();
    let text = format!(
        r#"[model]
vocab_size = 50257
n_positions = 32
n_embd = 32
n_layer = 2
n_head = 4
[data]
train = "{}/train_*.bin"
val = "{}/val_*.bin"
[train]
steps = 6
seed = 7
micro_batch_size = 2
global_batch_size = 4
seq_len = 32
val_every = 3
val_batches = 2
[optim]
lr = 1e-3
warmup_steps = 2
[log]
out_dir = "{}/run"
plot = false
{extra}"#,
        c.display(),
        c.display(),
        dir.display()
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The `loss` values of a metrics file, in order, as exact bit patterns.
pub fn losses(metrics: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(metrics).unwrap();
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let loss = v.get("loss")?;
            Some((v["step"].as_u64().unwrap(), loss.to_string()))
        })
        .collect()
}

/// The tensors of a run's `final/model.safetensors` (f32), sorted by name.
pub fn final_weights(run_dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(run_dir.join("final/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut w: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let x = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (k, x)
        })
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// A field of `scontrol show job ID` (e.g. `JobState`, `Restarts`), empty when absent.
pub fn job_field(id: &str, key: &str) -> String {
    let o = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .expect("cannot run scontrol");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(String::from))
        .unwrap_or_default()
}

/// Waits for Slurm job `id` to complete (panics with its output `out` when it fails or takes
/// over `secs`), releasing it early when it is held after a requeue: Slurm holds a requeued
/// job for about two minutes; it is released after 5 s here (at once, the new step can race
/// the old step's clean-up on a host, and PMIx then finds the old step's socket still bound).
pub fn wait_completed(id: &str, out: &Path, secs: u64) {
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let mut held_since: Option<Instant> = None;
    loop {
        let state = job_field(id, "JobState");
        let log = || std::fs::read_to_string(out).unwrap_or_default();
        match state.as_str() {
            "COMPLETED" => return,
            "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" => {
                panic!("job {id} ended {state}:\n{}", log())
            }
            "PENDING" if job_field(id, "Restarts") != "0" => {
                let since = *held_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    let _ = Command::new("scontrol")
                        .args(["update", &format!("JobId={id}"), "StartTime=now"])
                        .output();
                }
            }
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "job {id} did not finish ({state}):\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
