//! End-to-end tests of the binary on one rank: training on real text, determinism, and every
//! kind of bad input giving one clear message and a non-zero exit (never a panic or a hang).

mod common;
use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn training_is_deterministic_and_learns() {
    let dir = scratch("determinism");
    let cfg = tiny_config(&dir, "");
    let m1 = dir.join("m1.jsonl");
    let m2 = dir.join("m2.jsonl");
    ferrotron(&["train", "--config", s(&cfg), "--metrics", s(&m1)], &dir).assert_ok();
    ferrotron(&["train", "--config", s(&cfg), "--metrics", s(&m2)], &dir).assert_ok();
    let (a, b) = (losses(&m1), losses(&m2));
    assert_eq!(a.len(), 6);
    assert_eq!(
        a, b,
        "two runs with the same config must give bit-identical losses"
    );
    let first: f64 = a[0].1.parse().unwrap();
    let last: f64 = a[5].1.parse().unwrap();
    assert!(
        first > 10.0 && last < first,
        "loss should fall from ~10.8: {a:?}"
    );
    // Metrics carry the documented keys; the final weights are a Hugging Face directory.
    let line = std::fs::read_to_string(&m1).unwrap();
    for key in [
        "\"step\"",
        "\"loss\"",
        "\"lr\"",
        "\"grad_norm\"",
        "\"tokens_per_s\"",
        "\"step_ms\"",
        "\"val_loss\"",
        "\"compute_ms\"",
        "\"comm_bytes\"",
    ] {
        assert!(line.contains(key), "metrics lack {key}");
    }
    assert!(
        dir.join("run/final/model.safetensors").is_file()
            && dir.join("run/final/config.json").is_file()
    );
}

#[test]
fn init_hf_validation_matches_eval() {
    // Train from exported weights; its step-0 validation loss must equal `eval` on the same windows.
    let dir = scratch("init-hf");
    let cfg = tiny_config(&dir, "");
    ferrotron(
        &["train", "--config", s(&cfg), "--set", "train.steps=2"],
        &dir,
    )
    .assert_ok();
    let hf = dir.join("run/final");
    let m = dir.join("ft.jsonl");
    let out_dir = format!("log.out_dir={:?}", s(&dir.join("ft")));
    ferrotron(
        &[
            "train",
            "--config",
            s(&cfg),
            "--init-hf",
            s(&hf),
            "--metrics",
            s(&m),
            "--set",
            &out_dir,
        ],
        &dir,
    )
    .assert_ok();
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&m).unwrap().lines().next().unwrap()).unwrap();
    let val = first["val_loss"].as_f64().unwrap();
    let data = format!("{}/val_*.bin", corpus().display());
    let o = ferrotron(
        &[
            "eval",
            "--hf",
            s(&hf),
            "--data",
            &data,
            "--batch",
            "2",
            "--seq",
            "32",
            "--batches",
            "2",
            "--json",
        ],
        &dir,
    );
    o.assert_ok();
    let e: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(e["tokens"].as_u64(), Some(2 * 2 * 32));
    assert!(
        (e["loss"].as_f64().unwrap() - val).abs() < 1e-5,
        "eval {} vs val {val}",
        e["loss"]
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = scratch("config-errors");
    let cfg = tiny_config(&dir, "");
    let c = s(&cfg);
    ferrotron(&["train", "--config", c, "--set", "train.stepz=3"], &dir)
        .assert_clean_failure("stepz");
    ferrotron(&["train", "--config", c, "--set", "train.steps=abc"], &dir)
        .assert_clean_failure("train.steps");
    ferrotron(
        &["train", "--config", c, "--set", "parallel.schedule=zigzag"],
        &dir,
    )
    .assert_clean_failure("1f1b");
    ferrotron(&["train", "--config", c, "--set", "model.n_head=5"], &dir)
        .assert_clean_failure("model.n_head");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("n_layer = 2\n", "");
    let missing = dir.join("missing.toml");
    std::fs::write(&missing, text).unwrap();
    ferrotron(&["train", "--config", s(&missing)], &dir).assert_clean_failure("n_layer");
    ferrotron(&["train", "--config", s(&dir.join("nope.toml"))], &dir)
        .assert_clean_failure("nope.toml");
}

#[test]
fn data_errors_name_the_file() {
    let dir = scratch("data-errors");
    let cfg = tiny_config(&dir, "");
    let c = s(&cfg);
    let set_train = |p: &Path| format!("data.train={:?}", s(p));
    let missing = dir.join("missing_*.bin");
    ferrotron(
        &["train", "--config", c, "--set", &set_train(&missing)],
        &dir,
    )
    .assert_clean_failure("missing_");
    // Wrong magic.
    let good = std::fs::read(corpus().join("train_000000.bin")).unwrap();
    let bad = dir.join("badmagic.bin");
    let mut b = good.clone();
    b[0] ^= 0xff;
    std::fs::write(&bad, &b).unwrap();
    ferrotron(&["train", "--config", c, "--set", &set_train(&bad)], &dir)
        .assert_clean_failure("magic");
    // Truncated body.
    let trunc = dir.join("truncated.bin");
    std::fs::write(&trunc, &good[..good.len() - 100]).unwrap();
    ferrotron(&["train", "--config", c, "--set", &set_train(&trunc)], &dir)
        .assert_clean_failure("truncated");
    // Token ids beyond the model's vocabulary (GPT-2 ids into a 1000-token model).
    ferrotron(
        &["train", "--config", c, "--set", "model.vocab_size=1000"],
        &dir,
    )
    .assert_clean_failure(">= vocab");
}

#[test]
fn nan_loss_stops_with_the_step_number() {
    let dir = scratch("nan");
    let cfg = tiny_config(&dir, "");
    let o = ferrotron(
        &[
            "train",
            "--config",
            s(&cfg),
            "--set",
            "train.debug_nan_at_step=3",
        ],
        &dir,
    );
    o.assert_clean_failure("step 4: the loss (NaN)");
}

/// Rewrite a fixture's model.safetensors with one tensor removed or reshaped.
fn broken_hf(dir: &Path, drop: Option<&str>, reshape: Option<&str>) -> std::path::PathBuf {
    use safetensors::tensor::TensorView;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/fixtures/gpt2_v1000");
    let out = dir.join(format!(
        "hf-{}",
        drop.or(reshape).unwrap().replace('.', "_")
    ));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (name, v) in st.tensors() {
        if Some(name.as_str()) == drop {
            continue;
        }
        let mut shape = v.shape().to_vec();
        if Some(name.as_str()) == reshape {
            shape = vec![shape.iter().product::<usize>()];
        }
        views.push((name, TensorView::new(v.dtype(), shape, v.data()).unwrap()));
    }
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn hf_directory_errors_name_the_tensor() {
    let dir = scratch("hf-errors");
    let shard = corpus().join("val_000000.bin");
    let eval = |hf: &Path| {
        ferrotron(
            &[
                "eval",
                "--hf",
                s(hf),
                "--data",
                s(&shard),
                "--batch",
                "1",
                "--seq",
                "16",
            ],
            &dir,
        )
    };
    let gone = broken_hf(&dir, Some("transformer.h.1.mlp.c_fc.weight"), None);
    eval(&gone).assert_clean_failure("missing tensor \"transformer.h.1.mlp.c_fc.weight\"");
    let shaped = broken_hf(&dir, None, Some("transformer.h.0.attn.c_attn.weight"));
    eval(&shaped).assert_clean_failure("transformer.h.0.attn.c_attn.weight\" has shape");
    eval(&dir.join("no-such-dir")).assert_clean_failure("no-such-dir");
}

#[test]
fn grid_mismatch_is_a_clear_error() {
    let dir = scratch("grid");
    let cfg = tiny_config(&dir, "");
    ferrotron(
        &["train", "--config", s(&cfg), "--set", "parallel.tp=2"],
        &dir,
    )
    .assert_clean_failure("world size 1");
}

/// `log.profile_ops`: each step's metrics name every op the step ran with its calls (here one
/// rank, 2 layers, 2 micro-batches: 4 GEMMs per layer and micro-batch, 2 LayerNorms per layer
/// plus the final one), the log sums it up, and the losses are those of the unprofiled run.
#[test]
fn op_profile_counts_every_op() {
    let dir = scratch("profile");
    let plain = tiny_config(&dir, "");
    let m0 = dir.join("plain.jsonl");
    ferrotron(&["train", "--config", s(&plain), "--metrics", s(&m0)], &dir).assert_ok();
    let line0 = std::fs::read_to_string(&m0).unwrap();
    assert!(!line0.contains("\"ops\""), "no profile unless asked");
    let cfg = tiny_config(&dir, "profile_ops = true");
    let m1 = dir.join("profiled.jsonl");
    let o = ferrotron(&["train", "--config", s(&cfg), "--metrics", s(&m1)], &dir);
    o.assert_ok();
    assert_eq!(losses(&m0), losses(&m1), "profiling changes nothing");
    assert!(o.all().contains("op profile (rank 0"), "{}", o.all());
    let text = std::fs::read_to_string(&m1).unwrap();
    let steps: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect();
    assert_eq!(steps.len(), 6);
    for v in &steps {
        let ops = &v["ops"];
        let calls = |op: &str| ops[op]["calls"].as_u64().unwrap_or(0);
        assert_eq!(calls("linear_forward"), 4 * 2 * 2, "{ops}");
        assert_eq!(calls("linear_backward"), 4 * 2 * 2, "{ops}");
        assert_eq!(calls("layernorm_forward"), (2 * 2 + 1) * 2, "{ops}");
        assert_eq!(calls("attention_backward"), 2 * 2, "{ops}");
        assert_eq!(calls("embedding_backward"), 2, "{ops}");
        let ms: f64 = ops
            .as_object()
            .unwrap()
            .values()
            .map(|s| s["ms"].as_f64().unwrap())
            .sum();
        assert!(ms.is_finite() && ms >= 0.0, "{ops}");
    }
}

/// `train.cpu_gemm` / `FERROTRON_BLAS`: the provider is named in the log; a library that does
/// not load, or is not a CBLAS library, is one clear error on every rank; `auto` without any
/// library falls back to the built-in kernels with one log line, and `blas` without one fails;
/// the system BLAS and the built-in kernels train to the same losses within f32 rounding.
#[test]
fn cpu_gemm_provider_is_named_and_checked() {
    let dir = scratch("cpu-gemm");
    let cfg = tiny_config(&dir, "");
    // The suite also runs under FERROTRON_CPU_GEMM=builtin: this test sets its own choice.
    let train = |envs: &[(&str, &str)], sets: &[&str], m: &str| {
        let mut envs = envs.to_vec();
        envs.push(("FERROTRON_CPU_GEMM", ""));
        let envs = envs.as_slice();
        let metrics = dir.join(m);
        let mut a = vec!["train", "--config", s(&cfg), "--metrics", s(&metrics)];
        for x in sets {
            a.extend(["--set", x]);
        }
        (mpirun(2, &a, envs, &dir), metrics)
    };
    // A named library that does not exist, and one that is not BLAS: every rank fails.
    let (o, _) = train(
        &[("FERROTRON_BLAS", "/nonexistent/libnope.so")],
        &[],
        "x.jsonl",
    );
    o.assert_clean_failure("cannot load the BLAS library /nonexistent/libnope.so");
    assert!(o.stderr.contains("FERROTRON_BLAS"), "{}", o.stderr);
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libz.so.1 (a shared library without cblas_sgemm)");
    let (o, _) = train(&[("FERROTRON_BLAS", libz)], &[], "x.jsonl");
    o.assert_clean_failure("is not a CBLAS library: it has no cblas_sgemm");
    // No library to be found: auto falls back (one line), blas refuses.
    let none = [("FERROTRON_BLAS_SEARCH", "libnothing-here.so.9")];
    let (o, fallback) = train(&none, &[], "fallback.jsonl");
    o.assert_ok();
    let line = "no BLAS library loads (tried libnothing-here.so.9); using the built-in gemm crate";
    assert_eq!(o.all().matches(line).count(), 1, "{}", o.all());
    assert!(
        o.all().contains("backend cpu (built-in gemm crate"),
        "{}",
        o.all()
    );
    let (o, _) = train(&none, &["train.cpu_gemm=\"blas\""], "x.jsonl");
    o.assert_clean_failure("cpu_gemm = \"blas\" but no BLAS library loads");
    // The setup command installs OpenBLAS: auto finds a library and names it.
    let (o, blas) = train(&[], &["train.cpu_gemm=\"blas\""], "blas.jsonl");
    o.assert_ok();
    assert!(
        o.all().contains("rayon threads, BLAS at 1 thread per call"),
        "{}",
        o.all()
    );
    let (o, builtin) = train(&[], &["train.cpu_gemm=\"builtin\""], "builtin.jsonl");
    o.assert_ok();
    assert_eq!(losses(&builtin), losses(&fallback), "the same kernels");
    for ((sa, a), (sb, b)) in losses(&blas).iter().zip(losses(&builtin)) {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(
            *sa == sb && (a - b).abs() < 1e-4 * b.abs(),
            "step {sa}: {a} (blas) vs {b} (builtin)"
        );
    }
}
