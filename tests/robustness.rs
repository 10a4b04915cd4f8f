//! The fault matrix (see `docs/robustness.md`): each case runs the real binary under `mpirun`
//! inside a timeout and asserts what a user sees — every rank exits non-zero with one message
//! naming the cause (step, tensor, file, owner), or the documented recovery — and that no
//! checkpoint is damaged.
//!
//! Some cases mount small tmpfs file systems (a full disk, a read-only one): they need root, as
//! CI has; elsewhere they fail saying so.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train` on `np` ranks with the tiny config plus `sets` (each `KEY=VALUE`) and extra args.
fn train(
    dir: &Path,
    np: usize,
    name: &str,
    sets: &[&str],
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Out {
    let cfg = tiny_config(dir, "");
    let out = format!("log.out_dir={:?}", s(&dir.join(name)));
    let mut a = vec!["train", "--config", s(&cfg), "--set", &out];
    for x in sets {
        a.extend(["--set", x]);
    }
    a.extend_from_slice(extra);
    mpirun(np, &a, envs, dir)
}

/// Exactly one line starting (after an optional rank prefix) with `error:`.
fn one_message(o: &Out) -> String {
    let all = o.all();
    let errors: Vec<&str> = all.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line:\n{all}");
    errors[0].to_string()
}

fn losses_of(dir: &Path, name: &str) -> Vec<(u64, String)> {
    losses(&dir.join(name).join("metrics.jsonl"))
}

/// A NaN in one rank's gradient under a finite loss: with the default policy every rank stops
/// at that step with one message naming the gradient norm and the tensor.
#[test]
fn nan_gradient_stops_every_rank_naming_the_tensor() {
    let dir = scratch("rb-nan-stop");
    for (np, sets) in [(1, vec![]), (4, vec!["parallel.tp=2", "parallel.pp=2"])] {
        let o = train(
            &dir,
            np,
            &format!("r{np}"),
            &sets,
            &[],
            &[("FERROTRON_TEST_NAN_GRAD_AT", "3")],
        );
        o.assert_clean_failure(
            "step 3: the gradient norm (NaN) is not finite (first non-finite gradient:",
        );
        let msg = one_message(&o);
        assert!(!msg.contains("the loss"), "the loss was finite: {msg}");
        assert!(
            !o.all().contains("MPI_ABORT"),
            "aborted instead of a clean exit:\n{}",
            o.all()
        );
    }
}

/// `train.on_nonfinite = "skip"`: the step with the NaN gradient is discarded and run again,
/// so every logged loss is bitwise that of a run without the fault (1 rank and a dp×tp×pp grid
/// with ZeRO-1), and the metrics record the discarded step.
#[test]
fn skipped_step_leaves_the_run_bitwise_as_if_it_never_happened() {
    let dir = scratch("rb-nan-skip");
    for (np, sets) in [
        (1, vec![]),
        (
            8,
            vec![
                "parallel.tp=2",
                "parallel.pp=2",
                "optim.zero=1",
                "train.micro_batch_size=1",
            ],
        ),
    ] {
        let clean = format!("clean{np}");
        train(&dir, np, &clean, &sets, &[], &[]).assert_ok();
        let faulty = format!("skip{np}");
        let mut with = sets.clone();
        with.push("train.on_nonfinite=\"skip\"");
        let o = train(
            &dir,
            np,
            &faulty,
            &with,
            &[],
            &[("FERROTRON_TEST_NAN_GRAD_AT", "4:0")],
        );
        o.assert_ok();
        assert!(o.all().contains("step discarded"), "{}", o.all());
        assert_eq!(
            losses_of(&dir, &faulty),
            losses_of(&dir, &clean),
            "{np} ranks"
        );
        let m = std::fs::read_to_string(dir.join(&faulty).join("metrics.jsonl")).unwrap();
        assert!(m.contains("\"skipped_step\":4"), "{m}");
    }
}

/// An infinite loss with finite gradients: every rank stops, naming the loss.
#[test]
fn infinite_loss_stops_every_rank() {
    let dir = scratch("rb-inf");
    let o = train(
        &dir,
        2,
        "inf",
        &[],
        &[],
        &[("FERROTRON_TEST_INF_LOSS_AT", "2")],
    );
    o.assert_clean_failure("step 2: the loss (inf) is not finite");
    one_message(&o);
}

/// A step that is non-finite every time it runs (NaN weights) under the skip policy stops after
/// `train.max_skipped_steps` tries, naming the loss.
#[test]
fn persistent_nan_stops_after_max_skipped_steps() {
    let dir = scratch("rb-nan-persist");
    let o = train(
        &dir,
        2,
        "p",
        &[
            "train.on_nonfinite=\"skip\"",
            "train.max_skipped_steps=2",
            "train.debug_nan_at_step=1",
        ],
        &[],
        &[],
    );
    o.assert_clean_failure("more than train.max_skipped_steps = 2");
    let msg = one_message(&o);
    assert!(msg.contains("step 2: the loss (NaN)"), "{msg}");
}

/// Two runs on one checkpoint directory: the second is refused naming the first's host and
/// pid; a lock left by a dead process on this host is taken over with a warning; a lock of
/// another host is refused unless `--force-unlock`.
#[test]
fn checkpoint_dir_is_locked_against_a_second_run() {
    let dir = scratch("rb-lock");
    let ck = dir.join("ckpt");
    let ckset = format!("checkpoint.dir={:?}", s(&ck));
    // The first run holds the lock while its save of step 2 sleeps.
    let cfg = tiny_config(&dir, "");
    let mut first = std::process::Command::new("mpirun");
    mpi_env(&mut first, &[("FERROTRON_TEST_SAVE_DELAY", "2:20000")]);
    let log = std::fs::File::create(dir.join("first.log")).unwrap();
    let child = first
        .args([
            "-np",
            "1",
            FERROTRON,
            "train",
            "--config",
            s(&cfg),
            "--set",
            &ckset,
        ])
        .args([
            "--set",
            "checkpoint.every=2",
            "--set",
            "log.out_dir=\"first\"",
        ])
        .current_dir(&*dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Job {
        child,
        marker: s(&cfg).to_string(),
    };
    let lock = ck.join("LOCK");
    let t0 = std::time::Instant::now();
    while !lock.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(lock.exists(), "the first run never took the lock");
    let held: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    let pid = held["pid"].as_u64().unwrap();
    let host = held["host"].as_str().unwrap().to_string();
    let o = train(&dir, 1, "second", &[&ckset], &["--resume", "auto"], &[]);
    o.assert_clean_failure(&format!("is in use by another run (host {host}, pid {pid}"));
    // The first run dies without cleaning up: SIGKILL to its rank, then to mpirun.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|t| {
                t.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true)
    };
    let t0 = std::time::Instant::now();
    while !gone() && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(lock.exists(), "a killed run cannot remove its lock");
    let o = train(
        &dir,
        1,
        "third",
        &[&ckset, "train.steps=2"],
        &["--resume", "auto"],
        &[],
    );
    o.assert_ok();
    assert!(o.all().contains("taking over"), "{}", o.all());
    assert!(!lock.exists(), "the lock outlived its run");
    // A lock from another host: refused, then taken with --force-unlock.
    let foreign = r#"{"job":null,"host":"elsewhere-node-7","pid":4242,"since":1}"#;
    std::fs::write(&lock, foreign).unwrap();
    let o = train(
        &dir,
        1,
        "fourth",
        &[&ckset, "train.steps=3"],
        &["--resume", "auto"],
        &[],
    );
    o.assert_clean_failure("host elsewhere-node-7, pid 4242");
    let o = train(
        &dir,
        1,
        "fifth",
        &[&ckset, "train.steps=3"],
        &["--resume", "auto", "--force-unlock"],
        &[],
    );
    o.assert_ok();
    assert!(
        o.all().contains("--force-unlock: taking over"),
        "{}",
        o.all()
    );
}

/// A tmpfs mounted at `path` (created) with `opts` for the life of the value.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let o = run_timeout(
            30,
            "mount",
            &["-t", "tmpfs", "-o", opts, "tmpfs", s(path)],
            &[],
            path,
        );
        assert_eq!(
            o.code,
            0,
            "mounting a tmpfs at {} failed (these cases need root, as CI has):\n{}",
            path.display(),
            o.all()
        );
        Mount(path.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Checkpoint sizes of the tiny model: params + m + v ≈ 20 MB. A 30 MB disk holds one
/// checkpoint, not two.
const FITS_ONE: &str = "size=30m";

/// A disk that fills during the second save: every rank stops with one message naming a file
/// and "No space left on device"; the first checkpoint and `latest` stay and verify, the
/// partial directory is gone. With `checkpoint.on_error = "continue"` the run finishes.
#[test]
fn full_disk_during_a_save_keeps_the_previous_checkpoint() {
    let dir = scratch("rb-full");
    for (policy, np) in [("stop", 2), ("continue", 2)] {
        let ck = dir.join(format!("ckpt-{policy}"));
        let _m = Mount::tmpfs(&ck, FITS_ONE);
        let sets = [
            format!("checkpoint.dir={:?}", s(&ck)),
            "checkpoint.every=2".to_string(),
            "checkpoint.keep_last=5".to_string(),
            format!("checkpoint.on_error={policy:?}"),
            "optim.zero=1".to_string(),
        ];
        let sets: Vec<&str> = sets.iter().map(|x| x.as_str()).collect();
        let o = train(&dir, np, policy, &sets, &[], &[]);
        if policy == "stop" {
            o.assert_clean_failure("No space left on device");
            let msg = one_message(&o);
            assert!(msg.contains("step_00000004"), "{msg}");
        } else {
            o.assert_ok();
            assert!(
                o.all().contains("going on without this checkpoint"),
                "{}",
                o.all()
            );
            assert_eq!(losses_of(&dir, policy).len(), 6);
        }
        let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
        assert_eq!(latest.trim(), "step_00000002");
        assert!(
            !ck.join("step_00000004").exists(),
            "partial checkpoint left"
        );
        ferrotron(&["ckpt", "verify", s(&ck.join("step_00000002"))], &dir).assert_ok();
    }
}

/// A read-only checkpoint directory: the first save fails on every rank with one message
/// naming the directory and the cause.
#[test]
fn read_only_checkpoint_dir_fails_cleanly() {
    let dir = scratch("rb-ro");
    let ck = dir.join("ckpt");
    let _m = Mount::tmpfs(&ck, "size=1m,ro");
    let set = format!("checkpoint.dir={:?}", s(&ck));
    let o = train(&dir, 2, "ro", &[&set], &[], &[]);
    o.assert_clean_failure("Read-only file system");
    let msg = one_message(&o);
    assert!(msg.contains(s(&ck)), "{msg}");
}

/// A job started in the background: killed with its ranks (found by `marker`, a path in their
/// command line) when dropped, so a failing test never leaves a training job behind.
struct Job {
    child: std::process::Child,
    marker: String,
}

impl Job {
    /// `mpirun -np N ferrotron train` with the tiny config in `dir`, `log.out_dir = out` (also
    /// the marker that finds its ranks) and `sets`, its output in `dir/job.log`.
    fn train(dir: &Path, np: usize, out: &Path, sets: &[String], envs: &[(&str, &str)]) -> Self {
        let cfg = tiny_config(dir, "");
        let mut c = std::process::Command::new("mpirun");
        mpi_env(&mut c, envs);
        let log = std::fs::File::create(dir.join("job.log")).unwrap();
        c.args([
            "-np",
            &np.to_string(),
            FERROTRON,
            "train",
            "--config",
            s(&cfg),
        ])
        .args(["--set", &format!("log.out_dir={:?}", s(out))]);
        for x in sets {
            c.args(["--set", x]);
        }
        let child = c
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Job {
            child,
            marker: s(out).to_string(),
        }
    }

    /// The exit status once the job has ended, waiting at most `secs`; panics (the job is then
    /// killed by `drop`) naming `what` otherwise.
    fn wait_for(&mut self, secs: u64, what: &str) -> std::process::ExitStatus {
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_secs() < secs {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the job did not end within {secs} s of {what}");
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for (_, pid) in rank_pids(&self.marker) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The world ranks' pids of a running job whose command line holds `marker`.
fn rank_pids(marker: &str) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(marker)
            || !cmd.contains("target/release/ferrotron")
            || cmd.starts_with("mpirun")
        {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env).to_string();
        if let Some(r) = env
            .split('\0')
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
        {
            out.push((r.parse().unwrap(), pid));
        }
    }
    out.sort();
    out
}

/// A rank that stops making progress mid-step (outside MPI): every rank's watchdog ends the
/// job within `runtime.watchdog_s` plus a margin, each writes its flight record, and
/// `ferrotron diagnose` names the rank that held the job up.
#[test]
fn watchdog_ends_a_hung_job_and_diagnose_names_the_rank() {
    let dir = scratch("rb-hang");
    let t0 = std::time::Instant::now();
    let o = train(
        &dir,
        4,
        "hang",
        &["parallel.tp=2", "runtime.watchdog_s=5", "train.steps=20"],
        &[],
        &[("FERROTRON_TEST_HANG_AT", "3:1")],
    );
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.code != 0 && o.code != 124, "{}", o.all());
    assert!(
        o.all().contains("rank 1 made no progress for 5 s"),
        "{}",
        o.all()
    );
    eprintln!("job ended {secs:.1} s after it started");
    let d = ferrotron(&["diagnose", s(&dir.join("hang"))], &dir);
    d.assert_ok();
    assert!(
        d.stdout
            .contains("=> held up by rank 1 at step 3 (step), in no communication"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("rank 1 never entered all_reduce"),
        "{}",
        d.stdout
    );
}

/// A rank stopped by SIGSTOP (hung hard: its watchdog cannot run either): the other rank's
/// watchdog ends the job, and diagnose says rank 1 held it up.
#[test]
fn watchdog_ends_a_job_with_a_stopped_rank() {
    let dir = scratch("rb-sigstop");
    let out = dir.join("stopped");
    let sets = ["runtime.watchdog_s=5", "train.steps=100000"].map(String::from);
    let mut job = Job::train(&dir, 2, &out, &sets, &[]);
    let metrics = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    let steps_done = || {
        std::fs::read_to_string(&metrics)
            .map(|t| t.lines().filter(|l| l.contains("\"loss\"")).count())
            .unwrap_or(0)
    };
    while steps_done() < 2 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pids = rank_pids(s(&out));
    assert_eq!(pids.len(), 2, "{pids:?}");
    let stopped = pids[1].1;
    let kill = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &stopped.to_string()])
            .status();
    };
    kill("-STOP");
    let t1 = std::time::Instant::now();
    let st = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.wait_for(60, "SIGSTOP")));
    kill("-KILL");
    let st = st.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(!st.success());
    eprintln!(
        "job ended {:.1} s after SIGSTOP",
        t1.elapsed().as_secs_f64()
    );
    let d = ferrotron(&["diagnose", s(&out)], &dir);
    d.assert_ok();
    // mpirun continues the stopped rank to end it, so its own watchdog may still write (late).
    // Stopped between operations, rank 1 never entered the others' operation; stopped inside
    // one, its watchdog fired late.
    assert!(
        d.stdout.contains("=> held up by rank 1")
            || d.stdout
                .contains("=> held up by a rank that stopped running: rank 1 did not run"),
        "{}",
        d.stdout
    );
}

/// A rank killed with SIGKILL mid-run under mpirun: the job ends (no hang) with a non-zero
/// exit, and the last complete checkpoint verifies and resumes.
#[test]
fn a_killed_rank_ends_the_job_and_the_checkpoint_survives() {
    let dir = scratch("rb-sigkill");
    let ck = dir.join("ckpt");
    let out = dir.join("killed");
    let sets = [
        format!("checkpoint.dir={:?}", s(&ck)),
        "checkpoint.every=2".into(),
        "train.steps=100000".into(),
    ];
    let mut job = Job::train(&dir, 2, &out, &sets, &[]);
    let t0 = std::time::Instant::now();
    while !ck.join("latest").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pids = rank_pids(s(&out));
    assert_eq!(pids.len(), 2, "{pids:?}");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pids[1].1.to_string()])
        .status();
    let st = job.wait_for(60, "SIGKILL to a rank");
    assert!(!st.success());
    let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
    ferrotron(&["ckpt", "verify", s(&ck.join(latest.trim()))], &dir).assert_ok();
    let steps: usize = latest.trim().trim_start_matches("step_").parse().unwrap();
    let o = train(
        &dir,
        2,
        "resumed",
        &[
            &format!("checkpoint.dir={:?}", s(&ck)),
            &format!("train.steps={}", steps + 2),
        ],
        &["--resume", "auto"],
        &[],
    );
    o.assert_ok();
    assert!(
        o.all().contains("taking over"),
        "the killed run's lock: {}",
        o.all()
    );
}

/// SIGTERM to every rank while step 2's checkpoint is being written (its writers delayed): the
/// ranks finish that save, save the stop state and exit 75 for a requeue; every checkpoint left
/// behind is complete and verifies, and `--resume auto` goes on.
#[test]
fn sigterm_during_a_save_finishes_it_and_exits_for_requeue() {
    let dir = scratch("rb-sigterm");
    let ck = dir.join("ckpt");
    let out = dir.join("term");
    let sets = [
        format!("checkpoint.dir={:?}", s(&ck)),
        "checkpoint.every=2".into(),
        "train.steps=100000".into(),
    ];
    let mut job = Job::train(
        &dir,
        2,
        &out,
        &sets,
        &[("FERROTRON_TEST_SAVE_DELAY", "2:3000")],
    );
    let partial = ck.join("step_00000002");
    let t0 = std::time::Instant::now();
    while !partial.join("meta.h5").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !partial.join("COMPLETE").exists(),
        "the save was not slowed down"
    );
    for (_, pid) in rank_pids(s(&out)) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let st = job.wait_for(90, "SIGTERM");
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap();
    assert_eq!(st.code(), Some(75), "{log}");
    assert!(
        partial.join("COMPLETE").exists(),
        "the save in flight was not finished:\n{log}"
    );
    let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
    for e in std::fs::read_dir(&ck).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("step_") {
            ferrotron(&["ckpt", "verify", s(&e.path())], &dir).assert_ok();
        }
    }
    let steps: usize = latest.trim().trim_start_matches("step_").parse().unwrap();
    let o = train(
        &dir,
        2,
        "resumed",
        &[
            &format!("checkpoint.dir={:?}", s(&ck)),
            &format!("train.steps={}", steps + 1),
        ],
        &["--resume", "auto"],
        &[],
    );
    o.assert_ok();
}
