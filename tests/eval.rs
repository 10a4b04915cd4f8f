//! `ferrotron eval` on grids, through the training model: the same loss on every grid (within
//! 1e-5 of the 1-rank value) from a Hugging Face directory and from a training checkpoint
//! written on another grid, equal to the run's own validation loss; bad input fails cleanly.

mod common;
use common::*;
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/fixtures")
        .join(name)
}

/// `eval --json` on `np` ranks with `--tp`/`--pp` and `weights` (`--hf X` or `--ckpt X`):
/// (loss, tokens), printed once (rank 0).
fn eval(np: usize, tp: usize, pp: usize, weights: &[&str], seq: usize, dir: &Path) -> (f64, u64) {
    let data = format!("{}/val_*.bin", corpus().display());
    let (tp, pp, seq) = (tp.to_string(), pp.to_string(), seq.to_string());
    let mut args = vec!["eval"];
    args.extend_from_slice(weights);
    args.extend_from_slice(&[
        "--data",
        &data,
        "--batch",
        "2",
        "--seq",
        &seq,
        "--batches",
        "4",
        "--tp",
        &tp,
        "--pp",
        &pp,
        "--json",
    ]);
    let o = mpirun(np, &args, &[], dir);
    o.assert_ok();
    let lines: Vec<&str> = o.stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "one result line:\n{}", o.all());
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    (v["loss"].as_f64().unwrap(), v["tokens"].as_u64().unwrap())
}

const GRIDS: [(usize, usize, usize); 5] = [(2, 2, 1), (2, 1, 2), (4, 2, 2), (2, 1, 1), (4, 1, 2)];

#[test]
fn eval_is_the_same_on_every_grid() {
    let dir = scratch("eval-grids");
    let hf = fixture("gpt2_v50257");
    let w = ["--hf", hf.to_str().unwrap()];
    let (base, tokens) = eval(1, 1, 1, &w, 32, &dir);
    assert_eq!(tokens, 4 * 2 * 32);
    for (np, tp, pp) in GRIDS {
        let (l, t) = eval(np, tp, pp, &w, 32, &dir);
        assert_eq!(t, tokens);
        assert!(
            ((l - base) / base).abs() <= 1e-5,
            "np {np} tp {tp} pp {pp}: {l} vs 1 rank {base}"
        );
    }
}

/// A checkpoint written on (tp 2) evaluates to the same loss on 1 rank and on other grids, and
/// that loss is the training run's last validation loss on the same batches.
#[test]
fn eval_reads_checkpoints_from_any_grid() {
    let dir = scratch("eval-ckpt");
    let cfg = tiny_config(&dir, "");
    let ck = dir.join("ck");
    let out = dir.join("run");
    let sets = [
        format!("checkpoint.dir={:?}", ck.to_str().unwrap()),
        format!("log.out_dir={:?}", out.to_str().unwrap()),
        "train.steps=3".to_string(),
        "parallel.tp=2".to_string(),
        "train.val_batches=4".to_string(),
        "train.micro_batch_size=2".to_string(),
        "train.global_batch_size=2".to_string(),
    ];
    let mut args = vec!["train", "--config", cfg.to_str().unwrap()];
    for s in &sets {
        args.extend_from_slice(&["--set", s]);
    }
    mpirun(2, &args, &[], &dir).assert_ok();
    let last_val = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("val_loss").and_then(|x| x.as_f64()))
        .next_back()
        .expect("a validation loss");
    let w = ["--ckpt", ck.to_str().unwrap()];
    let seq = 32;
    let (base, _) = eval(1, 1, 1, &w, seq, &dir);
    assert!(
        ((base - last_val) / last_val).abs() <= 1e-5,
        "eval {base} vs the run's validation {last_val}"
    );
    for (np, tp, pp) in [(4, 2, 2), (2, 1, 2)] {
        let (l, _) = eval(np, tp, pp, &w, seq, &dir);
        assert!(
            ((l - base) / base).abs() <= 1e-5,
            "np {np} tp {tp} pp {pp}: {l} vs 1 rank {base}"
        );
    }
    let data = format!("{}/val_*.bin", corpus().display());
    let missing = dir.join("no-ckpt");
    mpirun(
        2,
        &[
            "eval",
            "--ckpt",
            missing.to_str().unwrap(),
            "--data",
            &data,
            "--batch",
            "2",
            "--seq",
            "16",
        ],
        &[],
        &dir,
    )
    .assert_clean_failure("no such checkpoint directory");
    mpirun(
        3,
        &[
            "eval",
            "--ckpt",
            ck.to_str().unwrap(),
            "--data",
            &data,
            "--batch",
            "2",
            "--seq",
            "16",
            "--tp",
            "2",
        ],
        &[],
        &dir,
    )
    .assert_clean_failure("is not divisible by --tp 2");
}
