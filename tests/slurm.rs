//! The single-node sbatch template under a real Slurm (the local cluster of
//! `scripts/cluster-local.sh`, which `scripts/test.sh` starts first): a job stopped by SIGUSR1
//! saves, exits 75, requeues itself, resumes from its checkpoint and finishes with the same
//! losses as an uninterrupted mpirun run.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn sbatch_template_requeues_after_the_stop_signal() {
    let up = Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        up,
        "Slurm is not running here: scripts/test.sh starts it (scripts/cluster-local.sh up 4)"
    );
    let dir = scratch("slurm");
    let ckpt = dir.join("ckpt");
    let cfg = tiny_config(
        &dir,
        &format!("[checkpoint]\ndir = {:?}\n", ckpt.to_str().unwrap()),
    );
    let sets = [
        "--set",
        "train.steps=300",
        "--set",
        "optim.min_lr=1e-3",
        "--set",
        "train.val_every=0",
    ];
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm/train.sbatch");
    let out = dir.join("job.out");
    let mut args = vec![
        "--parsable",
        "--ntasks=2",
        "-D",
        dir.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        template.to_str().unwrap(),
        cfg.to_str().unwrap(),
    ];
    args.extend_from_slice(&sets);
    let o = run_timeout(60, "sbatch", &args, &[("FERROTRON", FERROTRON)], &dir);
    assert_eq!(o.code, 0, "sbatch failed:\n{}", o.all());
    let id = o.stdout.trim().split(';').next().unwrap().to_string();
    let metrics = dir.join("run").join("metrics.jsonl");
    let t0 = Instant::now();
    let steps = || losses(&metrics).len();
    while !metrics.exists() || steps() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "job {id} did not start training:\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sh("scancel", &["--signal=USR1", &id]);
    wait_completed(&id, &out, 240);
    let log = std::fs::read_to_string(&out).unwrap();
    assert!(log.contains("exit code 75"), "{log}");
    assert!(log.contains("requeueing job"), "{log}");
    assert!(
        log.contains("(restart 1)") && log.contains("resuming from"),
        "{log}"
    );
    assert_eq!(job_field(&id, "Restarts"), "1");
    // The same run under mpirun, uninterrupted: identical losses.
    let refdir = dir.join("ref");
    let ref_out = format!("log.out_dir={:?}", refdir.to_str().unwrap());
    let ref_ck = format!("checkpoint.dir={:?}", refdir.join("ckpt").to_str().unwrap());
    let mut a = vec![
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        &ref_out,
        "--set",
        &ref_ck,
    ];
    a.extend_from_slice(&sets);
    mpirun(2, &a, &[], &dir).assert_ok();
    let want = losses(&refdir.join("metrics.jsonl"));
    assert_eq!(want.len(), 300);
    assert_eq!(
        losses(&metrics),
        want,
        "requeued Slurm job vs uninterrupted mpirun run"
    );
}
