//! 3D parallelism on the CUDA backend: 2 and 4 ranks sharing one GPU (gradients, activations
//! and vocab-parallel pieces staged through host memory and MPI) on the grids (2,1,1), (1,2,1),
//! (1,1,2) and (2,2,1) train the same model as the 1-rank GPU run — losses per step and final
//! weights within 1e-4 relative (fp32 GEMMs; the summation order differs between grids).
//! Runs only where a CUDA device exists; elsewhere it prints "no CUDA device: skipping" and
//! passes.

mod common;
use common::*;
use std::path::Path;

fn run(
    np: usize,
    dir: &Path,
    cfg: &Path,
    name: &str,
    sets: &[String],
) -> (Vec<f64>, Vec<(String, Vec<f32>)>) {
    let out = dir.join(name);
    let mut args: Vec<String> = ["train", "--config", cfg.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in [
        format!("log.out_dir={:?}", out.to_str().unwrap()),
        "train.backend=\"cuda\"".to_string(),
        "train.steps=10".to_string(),
        "model.n_layer=4".to_string(),
        "train.micro_batch_size=1".to_string(),
        "train.global_batch_size=8".to_string(),
    ]
    .iter()
    .chain(sets)
    {
        args.push("--set".into());
        args.push(s.clone());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    mpirun(np, &a, &[], dir).assert_ok();
    let losses = losses(&out.join("metrics.jsonl"))
        .iter()
        .map(|(_, l)| l.parse().unwrap())
        .collect();
    (losses, final_weights(&out))
}

#[test]
fn grids_sharing_one_gpu_match_the_one_rank_gpu_run() {
    if let Err(e) = ferrotron::backend::cuda::device_count() {
        eprintln!("no CUDA device: skipping ({e:#})");
        return;
    }
    let dir = scratch("cuda-grids");
    let cfg = tiny_config(&dir, "");
    let (base_l, base_w) = run(1, &dir, &cfg, "base", &[]);
    for (dp, tp, pp) in [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1)] {
        let name = format!("dp{dp}-tp{tp}-pp{pp}");
        let sets = [format!("parallel.tp={tp}"), format!("parallel.pp={pp}")];
        let (l, w) = run(dp * tp * pp, &dir, &cfg, &name, &sets);
        assert_eq!(l.len(), base_l.len(), "{name}");
        for (s, (a, b)) in l.iter().zip(&base_l).enumerate() {
            assert!(
                ((a - b) / b).abs() <= 1e-4,
                "{name} step {}: {a} vs {b}",
                s + 1
            );
        }
        for ((k, a), (_, b)) in w.iter().zip(&base_w) {
            // The attention key bias has an exactly zero gradient: only rounding noise.
            let tol = if k.ends_with("c_attn.bias") {
                1e-3
            } else {
                1e-4
            };
            let r = rel_diff(a, b);
            assert!(r <= tol, "{name}: final {k} differs by {r}");
        }
    }
}
