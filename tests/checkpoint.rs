//! Sharded HDF5 checkpoints under real `mpirun`: exact resume on the same grid, resharding onto
//! other grids, the file format as h5py sees it, kills in the middle of a save, stop signals,
//! and bad checkpoints failing cleanly on every rank.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Grid = (usize, usize, usize);

/// 4-layer model, micro-batches of 1, global batch 8 (as tests/parallel.rs); constant LR after
/// a 2-step warmup (min_lr = lr), so a run's schedule does not depend on `train.steps`.
const COMMON: [&str; 12] = [
    "--set",
    "model.n_layer=4",
    "--set",
    "train.micro_batch_size=1",
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.val_every=0",
    "--set",
    "optim.min_lr=1e-3",
    "--set",
    "log.save_final=false",
];

/// Arguments of a training run into `dir/name` on grid (dp, tp, pp) with checkpoints under
/// `dir/name/ckpt`.
fn train_args(
    dir: &Path,
    cfg: &Path,
    name: &str,
    grid: (usize, usize, usize),
    zero: u8,
    extra: &[String],
) -> Vec<String> {
    let out = dir.join(name);
    let mut a: Vec<String> = ["train", "--config", cfg.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(COMMON.iter().map(|s| s.to_string()));
    for s in [
        format!("log.out_dir={:?}", out.to_str().unwrap()),
        format!("checkpoint.dir={:?}", out.join("ckpt").to_str().unwrap()),
        format!("parallel.tp={}", grid.1),
        format!("parallel.pp={}", grid.2),
        format!("optim.zero={zero}"),
    ] {
        a.push("--set".into());
        a.push(s);
    }
    a.extend(extra.iter().cloned());
    a
}

fn np(grid: (usize, usize, usize)) -> usize {
    grid.0 * grid.1 * grid.2
}

fn run_ok(dir: &Path, grid: (usize, usize, usize), args: &[String]) -> Out {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = mpirun(np(grid), &a, &[], dir);
    o.assert_ok();
    o
}

fn sets(kv: &[&str]) -> Vec<String> {
    kv.iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

fn losses_of(dir: &Path, name: &str) -> Vec<(u64, String)> {
    losses(&dir.join(name).join("metrics.jsonl"))
}

/// Losses of steps > `from`: bitwise equal to `base` (exact) or within 1e-5 relative.
fn assert_continues(
    name: &str,
    got: &[(u64, String)],
    base: &[(u64, String)],
    from: u64,
    exact: bool,
) {
    let tail: Vec<_> = got.iter().filter(|x| x.0 > from).collect();
    let want: Vec<_> = base.iter().filter(|x| x.0 > from).collect();
    assert_eq!(tail.len(), want.len(), "{name}: steps after {from}");
    for (g, w) in tail.iter().zip(&want) {
        assert_eq!(g.0, w.0, "{name}");
        if exact {
            assert_eq!(g.1, w.1, "{name} step {}: loss not bitwise equal", g.0);
        } else {
            let (a, b): (f64, f64) = (g.1.parse().unwrap(), w.1.parse().unwrap());
            assert!(
                ((a - b) / b).abs() <= 1e-5,
                "{name} step {}: {a} vs {b}",
                g.0
            );
        }
    }
}

fn step_dir(dir: &Path, name: &str, step: usize) -> PathBuf {
    dir.join(name).join("ckpt").join(format!("step_{step:08}"))
}

/// 20 steps straight vs resumed from the step-10 checkpoint written by that run: bitwise equal
/// losses on (1,1,1), (2,2,2) and a ZeRO-1 grid; and resharding: (1,1,1) → (2,2,2),
/// (2,2,2) → (1,1,1), (4,1,1) (with ZeRO-1), (1,2,2), (1,1,4), ZeRO-1 (2,1,1) → (1,1,1), all
/// within 1e-5 of the uninterrupted 1-rank run.
#[test]
fn resume_is_exact_and_reshards_onto_any_grid() {
    let dir = scratch("ckpt-resume");
    let cfg = tiny_config(&dir, "");
    let straight = sets(&["train.steps=20", "checkpoint.every=10"]);
    let sources = [
        ("a", (1, 1, 1), 0u8),
        ("b", (2, 2, 2), 0),
        ("c", (2, 1, 1), 1),
    ];
    for (name, grid, zero) in sources {
        run_ok(
            &dir,
            grid,
            &train_args(&dir, &cfg, name, grid, zero, &straight),
        );
        assert_eq!(losses_of(&dir, name).len(), 20, "{name}");
    }
    let base = losses_of(&dir, "a");
    // (source run, grid, ZeRO, same grid as the source: bitwise)
    let resumes: [(&str, Grid, u8, bool); 9] = [
        ("a", (1, 1, 1), 0, true),
        ("a", (2, 2, 2), 0, false),
        ("b", (2, 2, 2), 0, true),
        ("b", (1, 1, 1), 0, false),
        ("b", (4, 1, 1), 1, false),
        ("b", (1, 2, 2), 0, false),
        ("b", (1, 1, 4), 0, false),
        ("c", (2, 1, 1), 1, true),
        ("c", (1, 1, 1), 0, false),
    ];
    for (src, grid, zero, same) in resumes {
        let name = format!("{src}-to-{}x{}x{}-zero{zero}", grid.0, grid.1, grid.2);
        let ck = step_dir(&dir, src, 10);
        let mut extra = sets(&["train.steps=20"]);
        extra.extend(["--resume".to_string(), ck.to_str().unwrap().to_string()]);
        let o = run_ok(
            &dir,
            grid,
            &train_args(&dir, &cfg, &name, grid, zero, &extra),
        );
        assert!(o.all().contains("resuming from"), "{name}: {}", o.all());
        let got = losses_of(&dir, &name);
        let reference = if same {
            losses_of(&dir, src)
        } else {
            base.clone()
        };
        assert_continues(&name, &got, &reference, 10, same);
    }
}

/// Samplers are versioned: a checkpoint without a `sampler` attribute (as every checkpoint
/// written before it was recorded) resumes with the Fisher–Yates order it was trained with,
/// bitwise; the default order (feistel) is a different one; asking for another order than the
/// checkpoint's is refused with one message.
#[test]
fn checkpoints_from_before_samplers_resume_in_their_order() {
    let dir = scratch("ckpt-sampler");
    let cfg = tiny_config(&dir, "");
    let grid = (1, 1, 1);
    let straight = sets(&["train.steps=8", "checkpoint.every=4"]);
    let mut old = straight.clone();
    old.extend(sets(&["data.sampler=\"shuffle\""]));
    run_ok(&dir, grid, &train_args(&dir, &cfg, "old", grid, 0, &old));
    run_ok(
        &dir,
        grid,
        &train_args(&dir, &cfg, "new", grid, 0, &straight),
    );
    let (l_old, l_new) = (losses_of(&dir, "old"), losses_of(&dir, "new"));
    assert_ne!(l_old, l_new, "the two orders gave the same losses");
    // Make the step-4 checkpoint look like one from before samplers were recorded.
    let ck = step_dir(&dir, "old", 4);
    let o = run_timeout(
        60,
        h5py_python(),
        &[
            "-c",
            "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); del f.attrs['sampler']; f.close()",
            ck.join("meta.h5").to_str().unwrap(),
        ],
        &[],
        &dir,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    let resume = |name: &str, extra: &[&str]| {
        let mut a = sets(&["train.steps=8"]);
        a.extend(sets(extra));
        a.extend(["--resume".to_string(), ck.to_str().unwrap().to_string()]);
        let args = train_args(&dir, &cfg, name, grid, 0, &a);
        let v: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        mpirun(1, &v, &[], &dir)
    };
    resume("resumed", &[]).assert_ok();
    assert_continues("resumed", &losses_of(&dir, "resumed"), &l_old, 4, true);
    resume("refused", &["data.sampler=\"feistel\""])
        .assert_clean_failure("data.sampler = \"feistel\", but checkpoint");
}

/// The format as a user sees it with h5py: meta attributes, datasets and their attributes,
/// CRCs recomputed in Python.
#[test]
fn h5py_reads_the_documented_layout() {
    let dir = scratch("ckpt-h5py");
    let cfg = tiny_config(&dir, "");
    let grid = (2, 2, 1);
    let extra = sets(&["train.steps=2"]);
    run_ok(&dir, grid, &train_args(&dir, &cfg, "z", grid, 1, &extra));
    let ck = step_dir(&dir, "z", 2);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkpoint_h5py.py");
    let o = run_timeout(
        120,
        h5py_python(),
        &[script.to_str().unwrap(), ck.to_str().unwrap()],
        &[],
        &dir,
    );
    assert_eq!(
        o.code,
        0,
        "h5py check failed (install python3-h5py):\n{}",
        o.all()
    );
    assert!(o.stdout.contains("h5py: ok"), "{}", o.all());
}

/// A Python that imports h5py: `python3` on PATH, else Debian's `/usr/bin/python3` (where
/// `python3-h5py` installs it; a pyenv or venv `python3` earlier on PATH does not see it).
fn h5py_python() -> &'static str {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = std::process::Command::new(py)
            .args(["-c", "import h5py"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return py;
        }
    }
    "python3"
}

/// Spawns mpirun, its output going to a log file in `dir`.
fn spawn_job(dir: &Path, n: usize, args: &[String], envs: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new("mpirun");
    c.arg("-np")
        .arg(n.to_string())
        .arg(FERROTRON)
        .args(args)
        .current_dir(dir);
    mpi_env(&mut c, envs);
    // Output to a file: a full pipe would block the job.
    let log = std::fs::File::create(dir.join(format!("job-{}.log", std::process::id()))).unwrap();
    let err = log.try_clone().unwrap();
    c.stdout(Stdio::from(log)).stderr(Stdio::from(err));
    c.spawn().expect("cannot start mpirun")
}

/// PIDs of the rank processes of an mpirun job (its children).
fn rank_pids(job: &std::process::Child) -> Vec<String> {
    let kids = Command::new("pgrep")
        .args(["-P", &job.id().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&kids.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL of the whole job while step 10's checkpoint is being written (a test hook delays
/// the writers): `ckpt verify` flags step 10 as incomplete, the previous one verifies, and
/// `--resume auto` continues from step 5, bitwise equal to an uninterrupted run.
#[test]
fn kill_during_save_leaves_the_previous_checkpoint() {
    let dir = scratch("ckpt-kill");
    let cfg = tiny_config(&dir, "");
    let grid = (2, 1, 1);
    let extra = sets(&["train.steps=20", "checkpoint.every=5"]);
    run_ok(
        &dir,
        grid,
        &train_args(&dir, &cfg, "straight", grid, 0, &extra),
    );
    let args = train_args(&dir, &cfg, "killed", grid, 0, &extra);
    let mut job = spawn_job(&dir, 2, &args, &[("FERROTRON_TEST_SAVE_DELAY", "10:60000")]);
    let partial = step_dir(&dir, "killed", 10);
    wait_for("a partial step-10 checkpoint", 120, || {
        partial.join("meta.h5").exists()
    });
    // The ranks (children of mpirun, in their own process groups), then mpirun.
    let mut pids = rank_pids(&job);
    assert_eq!(pids.len(), 2, "rank processes: {pids:?}");
    pids.push(job.id().to_string());
    Command::new("kill").arg("-9").args(&pids).status().unwrap();
    job.wait().unwrap();
    assert!(!partial.join("COMPLETE").exists());
    let o = ferrotron(&["ckpt", "verify", partial.to_str().unwrap()], &dir);
    o.assert_clean_failure("incomplete");
    let root = dir.join("killed").join("ckpt");
    let o = ferrotron(&["ckpt", "verify", root.to_str().unwrap()], &dir);
    o.assert_ok();
    assert!(o.stdout.contains("step 5"), "{}", o.all());
    let mut again = extra.clone();
    again.extend(["--resume".to_string(), "auto".to_string()]);
    let o = run_ok(
        &dir,
        grid,
        &train_args(&dir, &cfg, "killed", grid, 0, &again),
    );
    assert!(o.all().contains("at step 5"), "{}", o.all());
    let got = losses_of(&dir, "killed");
    assert_continues("killed", &got, &losses_of(&dir, "straight"), 0, true);
    assert!(step_dir(&dir, "killed", 20).join("COMPLETE").exists());
}

/// SIGUSR1 to one rank only: every rank saves the same step and exits with code 75; the
/// resumed run continues bitwise like an uninterrupted one.
#[test]
fn sigusr1_on_one_rank_saves_and_exits_for_requeue() {
    let dir = scratch("ckpt-signal");
    let cfg = tiny_config(&dir, "");
    let grid = (2, 1, 1);
    let args = train_args(&dir, &cfg, "sig", grid, 0, &sets(&["train.steps=400"]));
    let mut job = spawn_job(&dir, 2, &args, &[]);
    let metrics = dir.join("sig").join("metrics.jsonl");
    wait_for("training steps", 120, || losses_exist(&metrics, 3));
    let pids = rank_pids(&job);
    assert_eq!(pids.len(), 2, "rank processes: {pids:?}");
    Command::new("kill")
        .args(["-USR1", &pids[1]])
        .status()
        .unwrap();
    let t0 = Instant::now();
    while job.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "job did not stop after SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = job.wait().unwrap();
    let all = std::fs::read_to_string(dir.join(format!("job-{}.log", std::process::id()))).unwrap();
    assert_eq!(status.code(), Some(75), "exit code:\n{all}");
    let n = losses_of(&dir, "sig").len();
    assert!((3..400).contains(&n), "stopped after {n} steps");
    let saved = step_dir(&dir, "sig", n);
    assert!(
        saved.join("COMPLETE").exists(),
        "no complete checkpoint at step {n}:\n{all}"
    );
    let latest = std::fs::read_to_string(dir.join("sig/ckpt/latest")).unwrap();
    assert_eq!(latest.trim(), format!("step_{n:08}"));
    // Resume to n + 3 steps; compare with an uninterrupted run of n + 3 steps.
    let total = format!("train.steps={}", n + 3);
    let mut again = sets(&[&total]);
    again.extend(["--resume".to_string(), "auto".to_string()]);
    run_ok(&dir, grid, &train_args(&dir, &cfg, "sig", grid, 0, &again));
    run_ok(
        &dir,
        grid,
        &train_args(&dir, &cfg, "ref", grid, 0, &sets(&[&total])),
    );
    assert_continues(
        "sig",
        &losses_of(&dir, "sig"),
        &losses_of(&dir, "ref"),
        0,
        true,
    );
}

fn losses_exist(metrics: &Path, n: usize) -> bool {
    std::fs::read_to_string(metrics)
        .is_ok_and(|t| t.lines().filter(|l| l.contains("\"loss\"")).count() >= n)
}

/// keep_last: only the newest K complete checkpoints stay; `latest` names the newest; a fresh
/// run refuses a checkpoint.dir that already holds checkpoints.
#[test]
fn keep_last_prunes_and_fresh_runs_refuse_used_dirs() {
    let dir = scratch("ckpt-keep");
    let cfg = tiny_config(&dir, "");
    let grid = (1, 1, 1);
    let extra = sets(&[
        "train.steps=8",
        "checkpoint.every=2",
        "checkpoint.keep_last=2",
        "checkpoint.background=false",
    ]);
    run_ok(&dir, grid, &train_args(&dir, &cfg, "k", grid, 0, &extra));
    let root = dir.join("k").join("ckpt");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["latest", "step_00000006", "step_00000008"]);
    let a = train_args(&dir, &cfg, "k", grid, 0, &extra);
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    mpirun(2, &a, &[], &dir).assert_clean_failure("already holds");
}

/// A corrupt, truncated or incomplete checkpoint, or one of another model, fails with one
/// message naming the problem, on every rank (mpirun -np 2), without hanging.
#[test]
fn bad_checkpoints_fail_cleanly() {
    let dir = scratch("ckpt-bad");
    let cfg = tiny_config(&dir, "");
    let grid = (1, 2, 1);
    run_ok(
        &dir,
        grid,
        &train_args(&dir, &cfg, "good", grid, 0, &sets(&["train.steps=2"])),
    );
    let good = step_dir(&dir, "good", 2);
    let resume = |name: &str, ck: &Path, more: &[&str]| -> Out {
        let mut extra = sets(&["train.steps=4"]);
        extra.extend(sets(more));
        extra.extend(["--resume".to_string(), ck.to_str().unwrap().to_string()]);
        let a = train_args(&dir, &cfg, name, grid, 0, &extra);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        mpirun(2, &a, &[], &dir)
    };
    let copy = |name: &str| -> PathBuf {
        let to = dir.join(name).join("step_00000002");
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    // A flipped byte inside one tensor's data.
    let flipped = copy("flipped");
    let tensor = "model/h.1.mlp.c_fc.weight";
    let shard = flipped.join("shard_pp0_tp1.h5");
    let off = hdf5::File::open(&shard)
        .unwrap()
        .dataset(tensor)
        .unwrap()
        .offset()
        .unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[off as usize + 100] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let fp = flipped.to_str().unwrap();
    ferrotron(&["ckpt", "verify", fp], &dir).assert_clean_failure(tensor);
    resume("r-flipped", &flipped, &[]).assert_clean_failure(tensor);
    // A NaN stored with a matching checksum (written by a tool, not by ferrotron, whose saves
    // refuse non-finite values): verify and resume name the tensor.
    let nan = copy("nan");
    let script = "import h5py, numpy as np, sys, zlib\n\
        f = h5py.File(sys.argv[1], 'r+'); d = f[sys.argv[2]]; a = d[...]; a.flat[7] = np.nan\n\
        d[...] = a; d.attrs['crc32'] = np.uint32(zlib.crc32(a.astype('<f4').tobytes())); f.close()";
    let o = run_timeout(
        60,
        h5py_python(),
        &[
            "-c",
            script,
            nan.join("shard_pp0_tp1.h5").to_str().unwrap(),
            tensor,
        ],
        &[],
        &dir,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    ferrotron(&["ckpt", "verify", nan.to_str().unwrap()], &dir)
        .assert_clean_failure("element 7 is NaN (not finite)");
    resume("r-nan", &nan, &[]).assert_clean_failure("element 7 is NaN");
    // A truncated file.
    let truncated = copy("truncated");
    let f = truncated.join("shard_pp0_tp0.h5");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    ferrotron(&["ckpt", "verify", truncated.to_str().unwrap()], &dir)
        .assert_clean_failure("shard_pp0_tp0.h5");
    resume("r-truncated", &truncated, &[]).assert_clean_failure("shard_pp0_tp0.h5");
    // A missing shard.
    let missing = copy("missing");
    std::fs::remove_file(missing.join("shard_pp0_tp1.h5")).unwrap();
    ferrotron(&["ckpt", "verify", missing.to_str().unwrap()], &dir)
        .assert_clean_failure("shard_pp0_tp1.h5");
    resume("r-missing", &missing, &[]).assert_clean_failure("shard_pp0_tp1.h5");
    // Another model shape.
    resume("r-shape", &good, &["model.n_embd=64"]).assert_clean_failure("different model");
    // `latest` naming a checkpoint that is not there.
    let root = dir.join("dangling");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("latest"), "step_00000099\n").unwrap();
    resume("r-latest", &root, &[]).assert_clean_failure("step_00000099");
    // An incomplete checkpoint named explicitly.
    let partial = copy("partial");
    std::fs::remove_file(partial.join("COMPLETE")).unwrap();
    resume("r-partial", &partial, &[]).assert_clean_failure("incomplete");
}
