//! Parity with Hugging Face `GPT2LMHeadModel`: fixtures from `tests/reference/make_fixtures.py`
//! (PyTorch float64). Logits, loss, every parameter gradient, and 5 AdamW steps with warmup,
//! cosine decay and clipping.

use ferrotron::backend::cpu::Cpu;
use ferrotron::backend::prelude::*;
use ferrotron::checkpoint::hf;
use ferrotron::optim::{clip, AdamW, AdamWConfig, LrSchedule};
use ferrotron::parallel::whole::Whole;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::PathBuf;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/fixtures")
        .join(name)
}

struct Expected {
    json: Value,
    bytes: Vec<u8>,
}

impl Expected {
    fn load(name: &str) -> Self {
        let dir = fixture_dir(name);
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        Self {
            json,
            bytes: std::fs::read(dir.join("expected.safetensors")).unwrap(),
        }
    }
    fn f32s(&self, key: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture lacks {key}"));
        assert_eq!(v.dtype(), Dtype::F32);
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn u32s(&self, key: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(key).unwrap();
        assert_eq!(v.dtype(), Dtype::I32);
        v.data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
            .collect()
    }
    fn num(&self, path: &[&str]) -> f64 {
        let mut v = &self.json;
        for p in path {
            v = &v[*p];
        }
        v.as_f64()
            .unwrap_or_else(|| panic!("expected.json lacks {path:?}"))
    }
    fn nums(&self, key: &str) -> Vec<f64> {
        self.json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn check_fixture(name: &str) {
    let ex = Expected::load(name);
    let (cfg, params) = hf::load(&fixture_dir(name)).unwrap();
    let (b, t) = (ex.num(&["batch"]) as usize, ex.num(&["seq"]) as usize);
    // The training model on one rank, its LM head in chunks of 3 rows (as a large vocabulary
    // runs it).
    let model = Whole::new(cfg, Cpu::new(2), 3).unwrap();
    let mut slot = model.slot(b, t).unwrap();
    let be = model.be();
    let params = be.upload_vec(params).unwrap();
    let tokens = ex.u32s("input_ids");
    let targets = ex.u32s("targets");

    // Logits (inference forward).
    let logits = model.logits(&mut slot, &params, &tokens).unwrap();
    let want = ex.f32s("logits");
    let (v, vp) = (cfg.vocab_size, cfg.padded_vocab);
    let mut max_abs = 0.0f32;
    for n in 0..b * t {
        for j in 0..v {
            max_abs = max_abs.max((logits[n * vp + j] - want[n * v + j]).abs());
        }
    }
    assert!(max_abs <= 1e-4, "{name}: logits max abs diff {max_abs}");

    // Loss and gradients.
    let ly = model.layout().clone();
    let mut grads = be.zeros(ly.total).unwrap();
    let scale = 1.0 / (b * t) as f32;
    let loss = model
        .loss(
            &mut slot,
            &params,
            &tokens,
            &targets,
            Some((&mut grads, scale)),
        )
        .unwrap();
    assert!(
        rel(loss, ex.num(&["loss"])) <= 1e-5,
        "{name}: loss {loss} vs {}",
        ex.num(&["loss"])
    );
    for e in &ly.entries {
        let want = ex.f32s(&format!("grad.transformer.{}", e.name));
        let got = &grads[e.offset..e.offset + want.len()];
        let diff: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = want.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(
            diff / norm <= 1e-4,
            "{name}: gradient of {} rel diff {}",
            e.name,
            diff / norm
        );
        assert!(
            grads[e.offset + want.len()..e.offset + e.len]
                .iter()
                .all(|&g| g == 0.0),
            "padding grads"
        );
    }

    // Five AdamW steps with warmup + cosine and clipping.
    let tr = |k: &str| ex.num(&["train", k]) as f32;
    let sched = LrSchedule {
        lr: tr("lr"),
        min_lr: tr("min_lr"),
        warmup_steps: tr("warmup_steps") as usize,
        total_steps: tr("total_steps") as usize,
    };
    let acfg = AdamWConfig {
        beta1: tr("beta1"),
        beta2: tr("beta2"),
        eps: tr("eps"),
        weight_decay: tr("weight_decay"),
    };
    let mut opt = AdamW::for_entries(be, acfg, &ly.entries, ly.total).unwrap();
    let mut p = be.upload(&params).unwrap();
    let want_losses = ex.nums("step_losses");
    let want_norms = ex.nums("grad_norms");
    for s in 0..want_losses.len() {
        grads.fill(0.0);
        let loss = model
            .loss(&mut slot, &p, &tokens, &targets, Some((&mut grads, scale)))
            .unwrap();
        let norm = clip::sum_squares(&grads).sqrt();
        clip::scale(&mut grads, clip::clip_coef(norm, tr("grad_clip")));
        opt.step(be, &mut p, &grads, sched.at(s)).unwrap();
        assert!(
            rel(loss, want_losses[s]) <= 1e-5,
            "{name}: step {s} loss {loss} vs {}",
            want_losses[s]
        );
        assert!(
            rel(norm, want_norms[s]) <= 1e-4,
            "{name}: step {s} grad norm {norm} vs {}",
            want_norms[s]
        );
    }
    let fin = model.loss(&mut slot, &p, &tokens, &targets, None).unwrap();
    assert!(
        rel(fin, ex.num(&["final_loss"])) <= 1e-5,
        "{name}: final loss {fin}"
    );
}

#[test]
fn matches_hf_vocab_50257() {
    check_fixture("gpt2_v50257");
}

#[test]
fn matches_hf_vocab_1000() {
    check_fixture("gpt2_v1000");
}

#[test]
fn safetensors_round_trip_is_bit_identical() {
    let (cfg, params) = hf::load(&fixture_dir("gpt2_v1000")).unwrap();
    let dir = std::env::temp_dir().join(format!("ferrotron-rt-{}", std::process::id()));
    hf::save(&dir, &cfg, &params).unwrap();
    let (cfg2, params2) = hf::load(&dir).unwrap();
    assert_eq!(cfg, cfg2);
    assert!(params
        .iter()
        .zip(&params2)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    hf::save(&dir, &cfg2, &params2).unwrap();
    let a = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (_, p3) = hf::load(&dir).unwrap();
    assert_eq!(params2, p3);
    assert!(!a.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// This rank's whole model (1 rank) from a fixture, as generation loads it.
fn stage_of(
    name: &str,
) -> (
    ferrotron::parallel::stage::StageModel<ferrotron::backend::cpu::Cpu>,
    Vec<f32>,
    usize,
) {
    let w = ferrotron::train::Weights::Hf(fixture_dir(name));
    let model = ferrotron::train::weights_model(&w).unwrap();
    let grid = ferrotron::parallel::Grid {
        dp: 1,
        tp: 1,
        pp: 1,
    };
    let (m, p) =
        ferrotron::train::load_stage(ferrotron::backend::cpu::Cpu::new(1), model, &w, grid, 0)
            .unwrap();
    let host = m.be.download(&p).unwrap();
    (m, host, model.vocab_size)
}

#[test]
fn greedy_generation_matches_hf() {
    use ferrotron::generate::{engine, Prompt, Sampling};
    for name in ["gpt2_v50257", "gpt2_v1000"] {
        let ex = Expected::load(name);
        let ids = |k: &str| -> Vec<u32> {
            ex.json["greedy"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (m, host, _) = stage_of(name);
        let params = m.be.upload(&host).unwrap();
        let greedy = Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let want = ids("new_ids");
        let prompt = Prompt {
            index: 0,
            ids: ids("prompt_ids"),
        };
        let tp = ferrotron::parallel::Tp::single();
        let got = engine::run(&m, &params, &[prompt], want.len(), &greedy, &tp, None).unwrap();
        assert_eq!(
            got[0], want,
            "{name}: greedy continuation differs from transformers"
        );
    }
}

/// Generation's prefill (the whole prompt in one forward, attention against the KV cache)
/// gives transformers' logits at every position of the fixture's first row.
#[test]
fn prefill_logits_match_hf() {
    use ferrotron::generate::stage::{blocks, embed, logits, KvCache, SeqRows};
    for name in ["gpt2_v50257", "gpt2_v1000"] {
        let ex = Expected::load(name);
        let t = ex.num(&["seq"]) as usize;
        let (m, host, v) = stage_of(name);
        let params = m.be.upload(&host).unwrap();
        let tokens: Vec<u32> = ex.u32s("input_ids")[..t].to_vec();
        let tp = ferrotron::parallel::Tp::single();
        let positions: Vec<usize> = (0..t).collect();
        let mut x = embed(&m, &params, &tokens, &positions, &tp).unwrap();
        let mut caches = vec![KvCache::new(&m, t).unwrap()];
        let seq = SeqRows {
            row0: 0,
            rows: t,
            start: 0,
            cache: 0,
        };
        blocks(&m, &params, &mut x, &[seq], &mut caches, &tp).unwrap();
        let z = logits(&m, &params, &x, &positions, &tp).unwrap();
        let vp = z.len() / t;
        let want = ex.f32s("logits");
        let mut worst = 0.0f32;
        for i in 0..t {
            for j in 0..v {
                worst = worst.max((z[i * vp + j] - want[i * v + j]).abs());
            }
        }
        assert!(worst <= 1e-4, "{name}: prefill logits differ by {worst}");
    }
}

#[test]
fn eval_matches_hf_logits() {
    // A shard made of row 0 of the fixture batch plus one token: eval's windows (targets shifted
    // by one) must give the cross-entropy computed from the fixture's float64 logits.
    let name = "gpt2_v1000";
    let ex = Expected::load(name);
    let t = ex.num(&["seq"]) as usize;
    let v = 1000;
    let row: Vec<u32> = ex.u32s("input_ids")[..t].to_vec();
    let extra = 17u32;
    let mut shard: Vec<u16> = row.iter().map(|&x| x as u16).collect();
    shard.push(extra as u16);
    let dir = std::env::temp_dir().join(format!("ferrotron-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("row.bin");
    ferrotron::data::write_shard(&path, &shard).unwrap();
    // `ferrotron eval` (one process, the training model's forward).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrotron"))
        .args([
            "--threads",
            "1",
            "eval",
            "--hf",
            fixture_dir(name).to_str().unwrap(),
            "--data",
            path.to_str().unwrap(),
            "--batch",
            "1",
            "--seq",
            &t.to_string(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (loss, tokens) = (r["loss"].as_f64().unwrap(), r["tokens"].as_u64().unwrap());
    let logits = ex.f32s("logits");
    let mut want = 0.0f64;
    for i in 0..t {
        let z = &logits[i * v..i * v + v];
        let max = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = max + z.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let target = if i + 1 < t { row[i + 1] } else { extra };
        want += lse - z[target as usize] as f64;
    }
    want /= t as f64;
    assert_eq!(tokens, t as u64);
    assert!(rel(loss, want) <= 1e-5, "eval {loss} vs {want}");
    std::fs::remove_dir_all(&dir).ok();
}
