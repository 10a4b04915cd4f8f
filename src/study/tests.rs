//! Tests of `ferrotron study report` on hand-made study folders.

use super::measure::{measure, median};
use super::read::{first_error_line, parse_metrics, StepLine};
use super::report::{csv_field, CSV_HEADER};
use super::*;
use std::path::PathBuf;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A fresh, empty directory under the system temp dir, unique to this process and test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrotron-study-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes `study.json` requesting 1, 2 and 4 nodes (runs `n1`, `n2`, `n4`, batch 8).
fn write_study(dir: &Path) {
    let runs: Vec<String> = [1, 2, 4]
        .iter()
        .map(|n| {
            format!(r#"{{"nodes": {n}, "dir": "n{n}", "job_id": "1{n}", "global_batch_size": 8}}"#)
        })
        .collect();
    let study = format!(
        r#"{{"name": "t", "mode": "strong", "config": "inputs/tiny.toml", "nodes": [1, 2, 4],
 "grid_per_node": {{"dp": 1, "tp": 1, "pp": 1}}, "runs": [{}]}}"#,
        runs.join(", ")
    );
    std::fs::write(dir.join("study.json"), study).unwrap();
}

/// Writes run folder `dir/name` with `run.json` (`dp` ranks, 512 tokens per step, `steps`
/// configured) and one step line per `step_ms` value (compute = step − 10, comm dp 6, world 1),
/// plus a validation line and a checkpoint line, which the report must skip.
fn write_run(dir: &Path, name: &str, dp: u64, steps: u64, step_ms: &[f64]) -> PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let info = format!(
        r#"{{"world": {dp}, "nodes": {dp}, "grid": {{"dp": {dp}, "tp": 1, "pp": 1}}, "global_batch_size": 8,
 "seq_len": 64, "tokens_per_step": 512, "steps": {steps}, "threads_per_rank": 1, "git_commit": "abc",
 "hosts": [{{"host": "ftnode1", "ranks": [0]}}], "config": "[train]\nsteps = {steps}\n"}}"#
    );
    std::fs::write(run.join("run.json"), info).unwrap();
    let mut metrics = String::from("{\"step\":0,\"val_loss\":10.9}\n");
    for (i, ms) in step_ms.iter().enumerate() {
        metrics.push_str(&format!(
            r#"{{"step":{},"loss":9.1,"lr":0.001,"grad_norm":1.2,"tokens_per_s":1.0,"step_ms":{ms},"tokens":1,"model_tflops":0.01,"comm_bytes":{{"dp":100,"emb":0,"pp":0,"tp":0,"world":8}},"comm_ms":{{"dp":6.0,"emb":0.0,"pp":0.0,"tp":0.0,"world":1.0}},"compute_ms":{},"bubble_ms":0.0}}"#,
            i + 1,
            ms - 10.0
        ));
        metrics.push('\n');
    }
    metrics.push_str("{\"checkpoint\":{\"step\":2,\"ms\":5.0}}\n");
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    run
}

#[test]
fn report_writes_csv_and_plots_and_names_missing_runs() {
    let dir = temp_dir("report");
    write_study(&dir);
    // warm-up 2: n1 measures [40, 50, 60] (median 50), n2 measures [30, 26] (median 28).
    write_run(&dir, "n1", 1, 5, &[100.0, 90.0, 40.0, 50.0, 60.0]);
    write_run(&dir, "n2", 2, 4, &[80.0, 70.0, 30.0, 26.0]);
    let err = report(&dir, 2, None).unwrap_err().to_string();
    assert_eq!(err, "1 of 3 runs failed or missing: n4 (missing)");

    let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], CSV_HEADER);
    assert!(
        CSV_HEADER.starts_with("nodes,status,world,dp,tp,pp,global_batch_size,tokens_per_step,")
    );
    // n1: 512 / 0.050 s = 10240 tokens/s; mean step 50 = compute 40 + dp 6 + world 1 + other 3.
    assert_eq!(
        lines[1],
        "1,ok,1,1,1,1,8,512,3,50.000,10240.0,10240.0,1.0000,,40.000,0.000,6.000,0.000,0.000,1.000,0.000,3.000,"
    );
    // n2: 512 / 0.028 s = 18285.7; ideal 2 · 10240; efficiency 18285.7 / 20480 = 0.8929.
    assert_eq!(
        lines[2],
        "2,ok,2,2,1,1,8,512,2,28.000,18285.7,20480.0,0.8929,,18.000,0.000,6.000,0.000,0.000,1.000,0.000,3.000,"
    );
    assert_eq!(lines[3], "4,missing,,,,,8,,,,,40960.0,,,,,,,,,,,no output");
    assert_eq!(lines.len(), 4);

    for png in ["throughput.png", "efficiency.png", "breakdown.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(bytes.starts_with(PNG_MAGIC), "{png} is not a PNG");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_run_is_reported_with_its_reason() {
    let dir = temp_dir("failed");
    write_study(&dir);
    write_run(&dir, "n1", 1, 3, &[10.0, 10.0, 10.0]);
    let n2 = write_run(&dir, "n2", 2, 10, &[12.0, 12.0, 12.0]);
    std::fs::write(
        n2.join("job.out"),
        "start\nsrun: error: ftnode2: task 1: Exited, code 1\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("n4")).unwrap();
    std::fs::write(
        dir.join("n4/job.out"),
        "slurmstepd: error: *** JOB 14 CANCELLED ***\n",
    )
    .unwrap();
    let err = report(&dir, 1, None).unwrap_err().to_string();
    assert_eq!(
        err,
        "2 of 3 runs failed or missing: n2 (failed: stopped after step 3 of 10; srun: error: \
         ftnode2: task 1: Exited, code 1), n4 (failed: slurmstepd: error: *** JOB 14 CANCELLED ***)"
    );
    let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let n2_line = csv.lines().nth(2).unwrap();
    assert!(
        n2_line.starts_with("2,failed,2,2,1,1,8,512,2,12.000,"),
        "{n2_line}"
    );
    assert!(
        n2_line.ends_with(
            ",\"stopped after step 3 of 10; srun: error: ftnode2: task 1: Exited, code 1\""
        ),
        "{n2_line}"
    );
    let n4_line = csv.lines().nth(3).unwrap();
    assert!(n4_line.starts_with("4,failed,,,,,8,,"), "{n4_line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_study_file_is_an_error_naming_it() {
    let dir = temp_dir("nostudy");
    let err = format!("{:#}", report(&dir, 2, None).unwrap_err());
    assert!(
        err.contains(&dir.join("study.json").display().to_string()),
        "{err}"
    );
    std::fs::write(dir.join("study.json"), "{\"name\": ").unwrap();
    let err = format!("{:#}", report(&dir, 2, None).unwrap_err());
    assert!(err.contains("study.json: invalid study file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A step line with the given step time and nothing else.
fn step(step: u64, step_ms: f64) -> StepLine {
    StepLine {
        step,
        step_ms,
        compute_ms: 0.0,
        bubble_ms: 0.0,
        comm_ms: Default::default(),
    }
}

#[test]
fn median_and_warmup_window() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    let steps: Vec<StepLine> = [500.0, 300.0, 10.0, 30.0, 20.0, 1000.0]
        .iter()
        .enumerate()
        .map(|(i, &ms)| step(i as u64 + 1, ms))
        .collect();
    let m = measure(&steps, 2).unwrap();
    assert_eq!((m.steps_measured, m.last_step_only), (4, false));
    assert_eq!(m.step_ms_median, 25.0);
    // No counters: the whole mean step time (1060 / 4) is "other".
    assert_eq!(m.other_ms, 265.0);
    // Warm-up longer than the run: the last step alone.
    let m = measure(&steps[..2], 2).unwrap();
    assert_eq!(
        (m.steps_measured, m.last_step_only, m.step_ms_median),
        (1, true, 300.0)
    );
    assert_eq!(measure(&[], 2), None);
}

#[test]
fn metrics_parsing_skips_non_step_lines_and_names_bad_lines() {
    let path = Path::new("run/metrics.jsonl");
    let text = "{\"step\":0,\"val_loss\":9.0}\n\n{\"step\":2,\"loss\":1.0,\"step_ms\":5.0}\n\
                {\"checkpoint\":{\"step\":2}}\n{\"step\":1,\"loss\":null,\"step_ms\":7.0,\"val_loss\":3.0}\n";
    let steps = parse_metrics(text, path).unwrap();
    assert_eq!(steps, vec![step(1, 7.0), step(2, 5.0)]);
    let err = parse_metrics(
        "{\"step\":1,\"loss\":1.0,\"step_ms\":5.0}\nnot json\n",
        path,
    )
    .unwrap_err();
    assert!(err.to_string().contains("run/metrics.jsonl:2"), "{err}");
    let err = parse_metrics("{\"step\":1,\"loss\":1.0}\n", path).unwrap_err();
    assert!(err.to_string().contains("run/metrics.jsonl:1"), "{err}");
}

#[test]
fn job_errors_and_csv_quoting() {
    assert_eq!(
        first_error_line("ok\n  srun: error: boom\nerror: later\n").as_deref(),
        Some("srun: error: boom")
    );
    assert_eq!(first_error_line("all fine\n"), None);
    assert_eq!(csv_field("plain"), "plain");
    assert_eq!(csv_field("a, \"b\""), "\"a, \"\"b\"\"\"");
}

/// `--machine`: each run's recorded config and world go through `ferrotron plan`'s model; the
/// prediction lands in `summary.csv` (and as a line in `throughput.png`); a run whose config
/// cannot be planned gets a note, not an error.
#[test]
fn machine_adds_the_planned_throughput() {
    let dir = temp_dir("predicted");
    write_study(&dir);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tiny = std::fs::read_to_string(root.join("inputs/tiny.toml")).unwrap();
    for (name, dp) in [("n1", 1u64), ("n2", 2)] {
        let run = write_run(&dir, name, dp, 3, &[10.0, 10.0, 10.0]);
        let path = run.join("run.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["config"] = tiny.clone().into();
        std::fs::write(&path, v.to_string()).unwrap();
    }
    let n4 = write_run(&dir, "n4", 4, 3, &[10.0, 10.0, 10.0]);
    let _ = n4; // its config ("[train] steps = 3") is not a whole config: a note, no value
    let machine = root.join("inputs/machines/cpu-local.toml");
    report(&dir, 1, Some(&machine)).unwrap();
    let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let col = CSV_HEADER
        .split(',')
        .position(|c| c == "predicted_tokens_per_s")
        .unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let p1: f64 = rows[0][col].parse().unwrap();
    let p2: f64 = rows[1][col].parse().unwrap();
    assert!(
        p1 > 0.0 && p2 > p1,
        "two ranks predicted faster than one: {csv}"
    );
    assert_eq!(rows[2][col], "", "{csv}");
    assert!(
        csv.lines().nth(3).unwrap().contains("no prediction"),
        "{csv}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
