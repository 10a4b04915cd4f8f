//! `ferrotron generate` on grids under mpirun, through the training model: greedy
//! continuations equal transformers' (with cache) on 1 rank and on tp 2, pp 2, tp 2 × pp 2 and
//! dp 2; sampled tokens for a batch of prompts are the same on every grid for a seed;
//! checkpoints of any grid are sampled directly; bad input fails on every rank; `--profile-ops`
//! logs every rank's op profile.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/fixtures")
        .join(name)
}

/// (np, tp, pp)
const GRIDS: [(usize, usize, usize); 5] = [(1, 1, 1), (2, 2, 1), (2, 1, 2), (4, 2, 2), (2, 1, 1)];

/// `generate --json` on a grid: every result line (one per prompt), parsed.
fn generate(np: usize, tp: usize, pp: usize, args: &[&str], dir: &Path) -> Vec<serde_json::Value> {
    let (tp, pp) = (tp.to_string(), pp.to_string());
    let mut a = vec!["generate", "--tp", &tp, "--pp", &pp, "--json"];
    a.extend_from_slice(args);
    let o = mpirun(np, &a, &[], dir);
    o.assert_ok();
    o.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn greedy_matches_transformers_on_every_grid() {
    let dir = scratch("gen-greedy");
    for name in ["gpt2_v50257", "gpt2_v1000"] {
        let ex: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
        )
        .unwrap();
        let prompt = ids(&ex["greedy"]["prompt_ids"]);
        let want = ids(&ex["greedy"]["new_ids"]);
        let p: Vec<String> = prompt.iter().map(|x| x.to_string()).collect();
        let (p, n) = (p.join(","), want.len().to_string());
        let hf = fixture(name);
        for (np, tp, pp) in GRIDS {
            let args = [
                "--hf",
                hf.to_str().unwrap(),
                "--prompt-ids",
                &p,
                "--max-new-tokens",
                &n,
                "--temperature",
                "0",
            ];
            let out = generate(np, tp, pp, &args, &dir);
            assert_eq!(out.len(), 1, "{name} np {np} tp {tp} pp {pp}: one result");
            assert_eq!(ids(&out[0]["prompt_ids"]), prompt);
            assert_eq!(
                ids(&out[0]["ids"]),
                want,
                "{name} np {np} tp {tp} pp {pp}: greedy tokens differ from transformers"
            );
        }
    }
}

#[test]
fn sampled_tokens_are_the_same_on_every_grid() {
    let dir = scratch("gen-sampled");
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"The meaning of life is\"}\n{\"prompt\": \"Once upon a time\"}\n\
         {\"prompt_ids\": [464, 3290, 318]}\n{\"prompt\": \"A\"}\n{\"prompt\": \"Why do cats\"}\n",
    )
    .unwrap();
    let hf = fixture("gpt2_v50257");
    let args = [
        "--hf",
        hf.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--temperature",
        "0.9",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--seed",
        "11",
    ];
    let base = generate(1, 1, 1, &args, &dir);
    assert_eq!(base.len(), 5);
    for (i, v) in base.iter().enumerate() {
        assert_eq!(v["index"].as_u64(), Some(i as u64));
        assert_eq!(ids(&v["ids"]).len(), 6, "{v}");
    }
    for (np, tp, pp) in GRIDS.into_iter().skip(1).chain([(4, 1, 2)]) {
        let out = generate(np, tp, pp, &args, &dir);
        assert_eq!(out, base, "np {np} tp {tp} pp {pp}: sampled tokens differ");
    }
    // Another seed changes them.
    let mut other = args.to_vec();
    *other.last_mut().unwrap() = "12";
    assert_ne!(generate(1, 1, 1, &other, &dir), base);
}

/// A checkpoint written on pp 2 is sampled directly on 1 rank and on tp 2: the same tokens.
#[test]
fn checkpoints_are_sampled_on_any_grid() {
    let dir = scratch("gen-ckpt");
    let cfg = tiny_config(&dir, "");
    let ck = dir.join("ck");
    let set = format!("checkpoint.dir={:?}", ck.to_str().unwrap());
    mpirun(
        2,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &set,
            "--set",
            "train.steps=2",
            "--set",
            "parallel.pp=2",
        ],
        &[],
        &dir,
    )
    .assert_ok();
    let args = [
        "--ckpt",
        ck.to_str().unwrap(),
        "--prompt",
        "Hello there",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    ];
    let one = generate(1, 1, 1, &args, &dir);
    assert_eq!(one.len(), 1);
    assert_eq!(generate(2, 2, 1, &args, &dir), one);
    assert_eq!(generate(4, 2, 2, &args, &dir), one);
}

#[test]
fn bad_generation_input_fails_on_every_rank() {
    let dir = scratch("gen-bad");
    let hf = fixture("gpt2_v1000");
    let hf = hf.to_str().unwrap();
    let run = |np: usize, extra: &[&str]| {
        let mut a = vec!["generate", "--hf", hf];
        a.extend_from_slice(extra);
        mpirun(np, &a, &[], &dir)
    };
    run(2, &["--prompt-ids", "1,2,5000", "--tp", "2"])
        .assert_clean_failure("token id 5000 is outside the vocabulary of 1000");
    run(2, &["--prompt-ids", "1,2", "--max-new-tokens", "100"])
        .assert_clean_failure("exceeds the model's context of 64 positions");
    run(
        3,
        &["--prompt-ids", "1,2", "--max-new-tokens", "4", "--tp", "2"],
    )
    .assert_clean_failure("is not divisible by --tp 2");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": 1}\n").unwrap();
    run(
        2,
        &["--prompts", bad.to_str().unwrap(), "--max-new-tokens", "4"],
    )
    .assert_clean_failure("line 1: expected {\"prompt\": ...} or {\"prompt_ids\": [...]}");
}

/// `--profile-ops` on a tp 2 × pp 2 grid: the tokens are unchanged, and every rank logs its op
/// profile once: cached attention on every stage, the LM head only on the last.
#[test]
fn op_profile_is_logged_by_every_rank() {
    let dir = scratch("gen-profile");
    let hf = fixture("gpt2_v1000");
    let args = |profile: bool| {
        let mut a = vec![
            "--hf".to_string(),
            hf.to_str().unwrap().to_string(),
            "--prompt-ids".into(),
            "1,2,3,4,5".into(),
            "--max-new-tokens".into(),
            "4".into(),
            "--temperature".into(),
            "0".into(),
        ];
        if profile {
            a.push("--profile-ops".into());
        }
        a
    };
    let plain = args(false);
    let want = generate(
        4,
        2,
        2,
        &plain.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        &dir,
    );
    let prof = args(true);
    let mut a = vec!["generate", "--tp", "2", "--pp", "2", "--json"];
    a.extend(prof.iter().map(|s| s.as_str()));
    let o = mpirun(4, &a, &[], &dir);
    o.assert_ok();
    let got: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        ids(&got[0]["ids"]),
        ids(&want[0]["ids"]),
        "profiling changed the tokens"
    );
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.contains("op profile of rank"))
        .collect();
    assert_eq!(lines.len(), 4, "one profile line per rank:\n{}", o.stderr);
    for rank in 0..4 {
        let l = lines
            .iter()
            .find(|l| l.contains(&format!("op profile of rank {rank} ")))
            .unwrap_or_else(|| panic!("no profile of rank {rank}:\n{}", o.stderr));
        let last_stage = l.contains("(stage 1,");
        assert!(l.contains("attention_cached"), "{l}");
        assert_eq!(l.contains("logits_forward"), last_stage, "{l}");
    }
}
