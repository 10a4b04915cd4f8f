//! The multi-node path on a real multi-host Slurm: `scripts/cluster-local.sh up 4` (which
//! `scripts/test.sh` runs first) makes four hosts ftnode1..4, each a network namespace with its
//! own host name, address and slurmd. Jobs are submitted with the templates in `slurm/` exactly
//! as a user would; ranks on different hosts talk over TCP through the bridge.
//!
//! The tests take one lock so that only one of them uses the cluster at a time: the bridge's
//! byte counters are read around a job, and every "host" shares this machine's two cores.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static CLUSTER: Mutex<()> = Mutex::new(());

/// Holds the cluster for one test; checks that it is up with at least `hosts` hosts.
fn cluster(hosts: usize) -> std::sync::MutexGuard<'static, ()> {
    let g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let o = Command::new("sinfo")
        .args(["-h", "-N", "-o", "%N %t"])
        .output();
    let text = o.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    let up = text
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("ftnode") && !l.contains("down") && !l.contains("drain"))
        .count();
    assert!(
        up >= hosts,
        "the local cluster is not up with {hosts} hosts (sinfo: {text:?}): scripts/test.sh starts it with scripts/cluster-local.sh up 4"
    );
    g
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Host layout of a job: 2 hosts × 2 ranks.
const TWO_BY_TWO: &[&str] = &["--nodes=2", "--ntasks-per-node=2"];
/// Host layout of a GPU job: 2 hosts × 4 ranks, 4 GPUs each.
const TWO_BY_FOUR_GPUS: &[&str] = &["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"];

/// `sbatch --wait LAYOUT -o DIR/NAME TEMPLATE CONFIG ARGS` with the binary in $FERROTRON,
/// killed after `secs`; returns sbatch's result (its exit code is the job's) and the job's
/// output.
fn job(
    secs: u64,
    dir: &Path,
    name: &str,
    layout: &[&str],
    template_and_config: [&Path; 2],
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Out, String) {
    let out = dir.join(name);
    let mut a = vec!["--wait", "-D", s(dir)];
    a.extend_from_slice(layout);
    a.extend(["-o", s(&out)]);
    a.extend(template_and_config.map(s));
    a.extend_from_slice(args);
    let mut e = vec![("FERROTRON", FERROTRON)];
    e.extend_from_slice(envs);
    let o = run_timeout(secs, "sbatch", &a, &e, dir);
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    (o, log)
}

fn read_json(p: &Path) -> Value {
    let t = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Bytes received by the bridge from all test hosts so far (each packet between two hosts
/// enters the bridge once, through its sender's veth).
fn bridge_bytes() -> u64 {
    (1..=64)
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/class/net/ftv{i}/statistics/rx_bytes")).ok()
        })
        .map(|t| t.trim().parse::<u64>().unwrap_or(0))
        .sum()
}

/// Each rank's host from a run.json, in rank order.
fn rank_hosts(run: &Value) -> Vec<(String, u64, u64, u64)> {
    run["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_string(),
                r["dp"].as_u64().unwrap(),
                r["tp"].as_u64().unwrap(),
                r["local_rank"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn loss_values(metrics: &Path) -> Vec<f64> {
    losses(metrics)
        .iter()
        .map(|(_, l)| l.parse::<f64>().unwrap())
        .collect()
}

/// 2 hosts × 2 ranks, dp 2 × tp 2 through `slurm/train-multinode.sbatch`: TP inside a host, DP
/// across hosts (from run.json), the DP traffic really crosses the bridge, and the losses equal
/// a 1-rank run's within 1e-5.
#[test]
fn multinode_job_keeps_tp_in_a_host_and_matches_one_rank() {
    let _c = cluster(2);
    let dir = scratch("cluster-multinode");
    let ckpt = dir.join("ckpt");
    let cfg = tiny_config(&dir, &format!("[checkpoint]\ndir = {:?}\n", s(&ckpt)));
    let before = bridge_bytes();
    let template = repo("slurm/train-multinode.sbatch");
    let (o, log) = job(
        240,
        &dir,
        "job.out",
        TWO_BY_TWO,
        [&template, &cfg],
        &["--set", "parallel.tp=2"],
        // Open MPI names the transport it picks for each peer.
        &[("OMPI_MCA_btl_base_verbose", "100")],
    );
    assert_eq!(o.code, 0, "job failed: {}\n{log}", o.all());
    let crossed = bridge_bytes() - before;
    // Each rank reaches its host's other rank through shared memory (vader) and the other
    // host's ranks over TCP.
    let picks: Vec<&str> = log.lines().filter(|l| l.contains("bml: Using")).collect();
    for l in &picks {
        let here = l.split([':', '[']).nth(1).unwrap_or("");
        let there = l.rsplit("on node ").next().unwrap_or("");
        let btl = l.split("Using ").nth(1).unwrap_or("");
        match btl.split(' ').next() {
            Some("tcp") => assert_ne!(here, there, "{l}"),
            Some("vader") | Some("self") => assert_eq!(here, there, "{l}"),
            other => panic!("unexpected transport {other:?}: {l}"),
        }
    }
    assert!(
        picks.iter().filter(|l| l.contains("Using tcp btl")).count() >= 4,
        "every rank should pick TCP for the other host:\n{}",
        picks.join("\n")
    );
    let run = read_json(&dir.join("run/run.json"));
    assert_eq!(run["nodes"], 2, "{run}");
    assert_eq!(run["world"], 4);
    assert_eq!(run["grid"]["tp"], 2);
    let places = rank_hosts(&run);
    for (i, a) in places.iter().enumerate() {
        for b in &places[i + 1..] {
            if a.1 == b.1 {
                assert_eq!(a.0, b.0, "tp peers on different hosts: {places:?}");
            } else {
                assert_ne!(a.0, b.0, "dp peers on one host: {places:?}");
            }
        }
        assert_eq!(
            a.3, a.2,
            "node-local rank should equal the tp rank: {places:?}"
        );
    }
    assert!(log.contains("host ftnode"), "no per-host line:\n{log}");
    assert!(!run["git_commit"].as_str().unwrap_or("").is_empty());
    // The dp reduction (bytes summed over its ranks) crosses the bridge between the hosts.
    let text = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    let dp_bytes: u64 = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["comm_bytes"]["dp"].as_u64())
        .sum();
    assert!(dp_bytes > 0);
    assert!(
        crossed >= dp_bytes / 2,
        "only {crossed} bytes crossed the bridge; the dp reduction moved {dp_bytes}"
    );
    // The same model on one rank.
    let one = dir.join("one");
    let sets = [
        format!("log.out_dir={:?}", s(&one)),
        "checkpoint.dir=\"\"".to_string(),
    ];
    let mut a = vec!["train", "--config", s(&cfg)];
    for x in &sets {
        a.extend(["--set", x.as_str()]);
    }
    mpirun(1, &a, &[], &dir).assert_ok();
    let want = loss_values(&one.join("metrics.jsonl"));
    let got = loss_values(&dir.join("run/metrics.jsonl"));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            ((g - w) / w).abs() <= 1e-5,
            "step {}: 2 hosts × 2 ranks {g} vs 1 rank {w}",
            i + 1
        );
    }
}

/// The multi-node job stopped by USR1 to its batch shell (what `--signal=B:USR1@…` sends):
/// the script forwards it, every rank on both hosts saves and exits 75, the job requeues and
/// resumes on both hosts, and the losses are bitwise those of an uninterrupted run.
#[test]
fn multinode_job_requeues_after_the_stop_signal() {
    let _c = cluster(2);
    let dir = scratch("cluster-requeue");
    let ckpt = dir.join("ckpt");
    let cfg = tiny_config(&dir, &format!("[checkpoint]\ndir = {:?}\n", s(&ckpt)));
    let sets = [
        "--set",
        "parallel.tp=2",
        "--set",
        "train.steps=120",
        "--set",
        "train.val_every=0",
        "--set",
        "optim.min_lr=1e-3",
    ];
    let out = dir.join("job.out");
    let template = repo("slurm/train-multinode.sbatch");
    let mut args = vec![
        "--parsable",
        "-D",
        s(&dir),
        "--nodes=2",
        "--ntasks-per-node=2",
        "-o",
        s(&out),
        s(&template),
        s(&cfg),
    ];
    args.extend_from_slice(&sets);
    let o = run_timeout(60, "sbatch", &args, &[("FERROTRON", FERROTRON)], &dir);
    assert_eq!(o.code, 0, "sbatch failed:\n{}", o.all());
    let id = o.stdout.trim().split(';').next().unwrap().to_string();
    let metrics = dir.join("run/metrics.jsonl");
    let t0 = Instant::now();
    while !metrics.exists() || losses(&metrics).len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "job {id} did not start training:\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = run_timeout(30, "scancel", &["--batch", "--signal=USR1", &id], &[], &dir);
    assert_eq!(o.code, 0, "scancel: {}", o.all());
    wait_completed(&id, &out, 300);
    let log = std::fs::read_to_string(&out).unwrap();
    for want in [
        "forwarding USR1",
        "exit code 75",
        "requeueing job",
        "(restart 1)",
        "resuming from",
    ] {
        assert!(log.contains(want), "job output lacks {want:?}:\n{log}");
    }
    let steps_before = log
        .split("(restart 1)")
        .next()
        .unwrap()
        .matches("stopped by a signal after step")
        .count();
    assert_eq!(steps_before, 1, "{log}");
    let run = read_json(&dir.join("run/run.json"));
    assert_eq!(run["nodes"], 2, "resumed run's placement: {run}");
    assert_eq!(run["launcher"]["SLURM_RESTART_COUNT"], "1", "{run}");
    // The same grid, uninterrupted.
    let refdir = dir.join("ref");
    let (o1, o2) = (
        format!("log.out_dir={:?}", s(&refdir)),
        format!("checkpoint.dir={:?}", s(&refdir.join("ckpt"))),
    );
    let mut a = vec!["train", "--config", s(&cfg), "--set", &o1, "--set", &o2];
    a.extend_from_slice(&sets);
    mpirun(4, &a, &[], &dir).assert_ok();
    let want = losses(&refdir.join("metrics.jsonl"));
    assert_eq!(want.len(), 120);
    assert_eq!(
        losses(&metrics),
        want,
        "requeued 2-host job vs uninterrupted run"
    );
}

/// A 1/2/4-host strong-scaling study through `scripts/scaling-study.sh` ends with summary.csv
/// (every node count ok, 4 hosts in the largest run) and the three plots.
#[test]
fn strong_scaling_study_on_one_two_and_four_hosts() {
    let _c = cluster(4);
    let dir = scratch("cluster-study");
    let cfg = tiny_config(&dir, "");
    let study = dir.join("study");
    let script = repo("scripts/scaling-study.sh");
    let run = || {
        run_timeout(
            420,
            "bash",
            &[
                s(&script),
                "--config",
                s(&cfg),
                "--nodes",
                "1,2,4",
                "--mode",
                "strong",
                "--out",
                s(&study),
                "--steps",
                "4",
                "--set",
                "train.micro_batch_size=1",
                "--wait",
            ],
            &[("FERROTRON", FERROTRON)],
            &dir,
        )
    };
    let mut o = run();
    // Now and then a rank of a 4-host job on this machine's Slurm 22.05 + PMIx dies of a call
    // through a NULL pointer (dmesg: "segfault at 0 ip 0"; once in about five runs of this
    // file; cause not found yet, see the issue notes). One retry for exactly that, said on
    // stderr; anything else fails at once.
    if o.code != 0 && o.all().contains("Segmentation fault") {
        eprintln!(
            "study: a rank died of SIGSEGV (known local-cluster flake); retrying once:\n{}",
            o.all()
        );
        std::fs::remove_dir_all(&study).unwrap();
        o = run();
    }
    assert_eq!(o.code, 0, "study failed:\n{}", o.all());
    let csv = std::fs::read_to_string(study.join("summary.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let nodes: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(nodes, ["1", "2", "4"], "{csv}");
    for r in &rows {
        assert_eq!(r[1], "ok", "{csv}");
        assert_eq!(r[6], "4", "strong scaling keeps the global batch: {csv}");
        let tps: f64 = r[10].parse().unwrap();
        assert!(tps > 0.0, "{csv}");
    }
    let run = read_json(&study.join("n4/run.json"));
    assert_eq!(run["nodes"], 4, "{run}");
    assert_eq!(run["grid"]["dp"], 4);
    for png in ["throughput.png", "efficiency.png", "breakdown.png"] {
        let b = std::fs::read(study.join(png)).unwrap();
        assert!(
            b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 5000,
            "{png}"
        );
    }
}

/// `slurm/train-gpu.sbatch` on 2 hosts × 4 GPUs (GRES placeholders, no GPUs): sbatch accepts
/// it, `--dry-run` maps ranks 0–3 of host 1 and 4–7 of host 2 to devices 0–3, and a real
/// submission with the CPU backend trains through the same launch logic.
#[test]
fn gpu_template_maps_ranks_to_devices_by_local_rank() {
    let _c = cluster(2);
    let dir = scratch("cluster-gpu");
    let cfg = tiny_config(&dir, "");
    let template = repo("slurm/train-gpu.sbatch");
    let o = run_timeout(
        60,
        "sbatch",
        &["--test-only", s(&template), s(&cfg)],
        &[],
        &dir,
    );
    assert_eq!(o.code, 0, "sbatch --test-only: {}", o.all());
    let sets = [
        "--set",
        "parallel.tp=2",
        "--set",
        "train.global_batch_size=8",
        "--set",
        "checkpoint.dir=\"\"",
    ];
    let mut a = vec!["--dry-run"];
    a.extend_from_slice(&sets);
    let (o, log) = job(
        180,
        &dir,
        "dry.out",
        TWO_BY_FOUR_GPUS,
        [&template, &cfg],
        &a,
        &[],
    );
    assert_eq!(o.code, 0, "dry run failed: {}\n{log}", o.all());
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["dry_run"] == true)
        .collect();
    assert_eq!(lines.len(), 8, "{log}");
    let host = |r: usize| lines[r]["host"].as_str().unwrap().to_string();
    for (r, v) in lines.iter().enumerate() {
        assert_eq!(v["rank"], r);
        assert_eq!(v["device"], format!("cuda:{}", r % 4), "{log}");
        assert_eq!(v["local_rank"], r % 4, "{log}");
        assert_eq!(host(r), host(r / 4 * 4), "{log}");
    }
    assert_ne!(host(0), host(4), "{log}");
    assert!(
        !dir.join("run/run.json").exists(),
        "a dry run trains nothing"
    );
    // A real submission of the template on the CPU backend.
    let mut a = vec!["--set", "train.steps=2"];
    a.extend_from_slice(&sets);
    let cpu = [("FERROTRON_BACKEND", "cpu")];
    let (o, log) = job(
        240,
        &dir,
        "cpu.out",
        TWO_BY_FOUR_GPUS,
        [&template, &cfg],
        &a,
        &cpu,
    );
    assert_eq!(o.code, 0, "cpu run failed: {}\n{log}", o.all());
    assert!(log.contains("CUDA_VISIBLE_DEVICES=0,1,2,3"), "{log}");
    let run = read_json(&dir.join("run/run.json"));
    let hosts: BTreeSet<String> = rank_hosts(&run).into_iter().map(|p| p.0).collect();
    assert_eq!(hosts.len(), 2, "{run}");
    assert_eq!(losses(&dir.join("run/metrics.jsonl")).len(), 2);
}

/// Refusals: a study asking for more hosts than the partition has is refused before anything
/// is submitted; a template started with a grid that does not match its allocation fails at
/// set-up on every rank with one message.
#[test]
fn bad_node_counts_and_grids_fail_with_one_message() {
    let _c = cluster(2);
    let dir = scratch("cluster-refuse");
    let cfg = tiny_config(&dir, "");
    let study = dir.join("study");
    let o = run_timeout(
        60,
        "bash",
        &[
            s(&repo("scripts/scaling-study.sh")),
            "--config",
            s(&cfg),
            "--nodes",
            "1,64",
            "--mode",
            "weak",
            "--out",
            s(&study),
        ],
        &[("FERROTRON", FERROTRON)],
        &dir,
    );
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.contains("usable node(s)") && o.stderr.contains("asks for 64"),
        "{}",
        o.all()
    );
    assert_eq!(o.stderr.matches("error:").count(), 1, "{}", o.all());
    assert!(!study.join("study.json").exists(), "nothing is submitted");
    // dp·tp·pp = 3 on 4 ranks.
    let template = repo("slurm/train-multinode.sbatch");
    let args = ["--set", "parallel.dp=3", "--set", "checkpoint.dir=\"\""];
    let (o, log) = job(
        120,
        &dir,
        "job.out",
        TWO_BY_TWO,
        [&template, &cfg],
        &args,
        &[],
    );
    assert_ne!(o.code, 0, "{log}");
    assert_ne!(o.code, 124, "hung:\n{log}");
    let msg = "world size 4 does not match the grid";
    assert_eq!(log.matches(msg).count(), 1, "one message:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Every rank exited non-zero (srun's per-host summaries cover tasks 0-1 and 2-3).
    assert!(
        log.contains("tasks 0-1: Exited with exit code 1")
            && log.contains("tasks 2-3: Exited with exit code 1"),
        "{log}"
    );
}

/// The documented fallback launcher (`FERROTRON_LAUNCH=mpirun`: Open MPI's mpirun inside the
/// allocation) places the ranks as `srun --mpi=pmix` does: same hosts, same node-local ranks
/// (both come from MPI, not from launcher variables).
#[test]
fn mpirun_inside_the_allocation_places_ranks_like_srun() {
    let _c = cluster(2);
    let dir = scratch("cluster-mpirun");
    let cfg = tiny_config(&dir, "");
    let template = repo("slurm/train-multinode.sbatch");
    let place = |launch: &str| {
        let (o, log) = job(
            120,
            &dir,
            &format!("{launch}.out"),
            TWO_BY_TWO,
            [&template, &cfg],
            &["--dry-run", "--set", "parallel.tp=2"],
            &[("FERROTRON_LAUNCH", launch)],
        );
        assert_eq!(o.code, 0, "{launch}: {}\n{log}", o.all());
        assert!(log.contains(&format!("launcher {launch}")), "{log}");
        let v: Vec<(String, u64, u64)> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                let host = v["host"].as_str().unwrap().to_string();
                (
                    host,
                    v["rank"].as_u64().unwrap(),
                    v["local_rank"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(v.len(), 4, "{log}");
        v
    };
    let srun = place("srun");
    let mpirun = place("mpirun");
    assert_eq!(srun, mpirun);
    assert_ne!(srun[0].0, srun[2].0, "{srun:?}");
}

/// The prepare-data template on 2 hosts × 2 ranks: the ranks on both hosts share the inputs
/// (text and pyarrow-written Parquet) and write the same folder, byte for byte, as one process.
#[test]
fn prepare_data_job_on_two_hosts_matches_one_process() {
    let _c = cluster(2);
    let dir = scratch("cluster-prepare");
    let text = corpus().parent().unwrap().join("text");
    let parquet = repo("tests/reference/fixtures/parquet/snappy.parquet");
    let inputs = [s(&text), s(&parquet)];
    let opts = ["--shard-tokens", "20000", "--val-every", "11"];
    let one = dir.join("one");
    let mut a = vec!["--threads", "1", "prepare-data", "--input"];
    a.extend(inputs);
    a.extend(["--out", s(&one)]);
    a.extend(opts);
    ferrotron(&a, &dir).assert_ok();
    let two = dir.join("two");
    let mut args = inputs.to_vec();
    args.extend(opts);
    let template = repo("slurm/prepare-data.sbatch");
    let (o, log) = job(
        120,
        &dir,
        "prep.out",
        TWO_BY_TWO,
        [&template, &two],
        &args,
        &[],
    );
    assert_eq!(o.code, 0, "job failed: {}\n{log}", o.all());
    assert!(log.contains("2 nodes × 2 ranks × 1 threads"), "{log}");
    assert!(log.contains("on 4 rank(s)"), "{log}");
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (want, got) = (files(&one), files(&two));
    assert!(want.len() > 5, "{} files", want.len());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "{} differs between 4 ranks on 2 hosts and one process",
            g.0
        );
    }
}

/// A rank killed with SIGKILL under `srun` on a 2-host job: `srun --kill-on-bad-exit` ends the
/// other ranks, the job ends FAILED (no hang until the time limit) and the last complete
/// checkpoint verifies.
#[test]
fn a_rank_killed_under_srun_ends_the_job() {
    let _c = cluster(2);
    let dir = scratch("cluster-sigkill");
    let ckpt = dir.join("ckpt");
    let cfg = tiny_config(
        &dir,
        &format!("[checkpoint]\ndir = {:?}\nevery = 2\n", s(&ckpt)),
    );
    let out = dir.join("job.out");
    let template = repo("slurm/train-multinode.sbatch");
    let args = [
        "--parsable",
        "-D",
        s(&dir),
        "--nodes=2",
        "--ntasks-per-node=1",
        "-o",
        s(&out),
        s(&template),
        s(&cfg),
        "--set",
        "train.steps=100000",
    ];
    let o = run_timeout(60, "sbatch", &args, &[("FERROTRON", FERROTRON)], &dir);
    assert_eq!(o.code, 0, "sbatch failed:\n{}", o.all());
    let id = o.stdout.trim().split(';').next().unwrap().to_string();
    let latest = ckpt.join("latest");
    let t0 = Instant::now();
    while !latest.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "job {id} wrote no checkpoint:\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The task with SLURM_PROCID=1 (on the second host).
    let victim = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(s(&cfg))
                && String::from_utf8_lossy(&cmd).starts_with(FERROTRON)
                && String::from_utf8_lossy(&env).contains("\0SLURM_PROCID=1\0")
        });
    let Some(victim) = victim else {
        let _ = run_timeout(30, "scancel", &[&id], &[], &dir);
        panic!("no rank 1 process found");
    };
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    let t1 = Instant::now();
    loop {
        let state = job_field(&id, "JobState");
        if ["FAILED", "CANCELLED", "COMPLETED", "NODE_FAIL"].contains(&state.as_str()) {
            assert_eq!(
                state,
                "FAILED",
                "{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
            break;
        }
        if t1.elapsed() > Duration::from_secs(120) {
            let _ = run_timeout(30, "scancel", &[&id], &[], &dir);
            panic!("job {id} still {state} 120 s after SIGKILL to a rank");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "job ended {:.1} s after the SIGKILL",
        t1.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(log.contains("Killed") || log.contains("task 1"), "{log}");
    let step = std::fs::read_to_string(&latest).unwrap();
    let o = ferrotron(&["ckpt", "verify", s(&ckpt.join(step.trim()))], &dir);
    o.assert_ok();
}
