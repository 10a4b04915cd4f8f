//! 3D parallelism on the CUDA backend: 2 and 4 ranks sharing one GPU (gradients, activations
//! and vocab-parallel pieces staged through host memory and MPI) on the grids (2,1,1), (1,2,1),
//! (1,1,2) and (2,2,1) train the same model as the 1-rank GPU run — losses per step and final
//! weights within 1e-4 relative (fp32 GEMMs; the summation order differs between grids).
//! The transports: `comm.backend = "auto"` picks host staging for ranks sharing the GPU (and
//! for one rank), an explicit "nccl" on one rank makes 1-rank NCCL groups and trains as the
//! staged run, an explicit "nccl" on a shared GPU fails cleanly,
//! and the backend's communication methods give the right sums and messages with NCCL (1 rank)
//! and staged MPI (2 ranks) on device buffers (`common/comm_check.rs`).
//! Needs a CUDA device: ignored unless run with --include-ignored (then a missing device fails).

#[path = "common/comm_check.rs"]
mod comm_check;
mod common;
use common::*;
use std::path::Path;

/// These tests are ignored unless asked for; then a missing device fails them.
fn no_gpu() -> bool {
    if let Err(e) = ferrotron::backend::cuda::device_count() {
        panic!("no usable CUDA device ({e:#})");
    }
    false
}

/// On a GPU machine NCCL is part of what is tested: its absence is a failure that says so, not
/// a panic inside cudarc in a child process.
fn need_nccl() {
    assert!(
        ferrotron::comm::link::nccl_loadable(),
        "libnccl.so cannot be loaded: put NCCL's lib directory on LD_LIBRARY_PATH (with a \
         libnccl.so -> libnccl.so.2 link; .carry/gpu_env.sh makes one on the lent machine)"
    );
}

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
    let o = mpirun(np, &a, &[], dir);
    o.assert_ok();
    // One rank: nothing to communicate; ranks sharing the GPU: no NCCL, no CUDA-aware MPI in
    // the carried Open MPI.
    let want = "comm: collectives mpi-staged";
    if !sets.iter().any(|s| s.starts_with("comm.backend")) {
        assert!(
            o.all().contains(want),
            "{name}: expected {want:?}:\n{}",
            o.all()
        );
    }
    let losses = losses(&out.join("metrics.jsonl"))
        .iter()
        .map(|(_, l)| l.parse().unwrap())
        .collect();
    (losses, final_weights(&out))
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn grids_sharing_one_gpu_match_the_one_rank_gpu_run() {
    if no_gpu() {
        return;
    }
    let dir = scratch("cuda-grids");
    let cfg = tiny_config(&dir, "");
    let (base_l, base_w) = run(1, &dir, &cfg, "base", &[]);
    // The first two run the LM head in chunks of 7 of the 32 rows (the base: all at once), so
    // the sub-range GEMMs and the loss kernels on partial buffers run on the GPU.
    for (dp, tp, pp, rows) in [(2, 1, 1, 7), (1, 2, 1, 7), (1, 1, 2, 0), (2, 2, 1, 0)] {
        let name = format!("dp{dp}-tp{tp}-pp{pp}-head{rows}");
        let sets = [
            format!("parallel.tp={tp}"),
            format!("parallel.pp={pp}"),
            format!("train.head_chunk_rows={rows}"),
        ];
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

/// One rank with NCCL (every group a 1-rank NCCL communicator) trains exactly as one rank with
/// staged MPI; two ranks sharing the GPU cannot use NCCL and say so.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn nccl_one_rank_groups_and_the_shared_gpu_rule() {
    if no_gpu() {
        return;
    }
    need_nccl();
    let dir = scratch("cuda-nccl");
    let cfg = tiny_config(&dir, "");
    let (nccl, _) = run(1, &dir, &cfg, "nccl", &["comm.backend=\"nccl\"".into()]);
    let (staged, _) = run(
        1,
        &dir,
        &cfg,
        "staged",
        &["comm.backend=\"mpi-staged\"".into()],
    );
    assert_eq!(nccl, staged, "1 rank: NCCL vs staged losses");
    let c = cfg.to_str().unwrap();
    let sets = [
        "train.backend=\"cuda\"",
        "comm.backend=\"nccl\"",
        "train.steps=1",
    ];
    let mut args = vec!["train", "--config", c];
    for s in &sets {
        args.extend_from_slice(&["--set", s]);
    }
    mpirun(2, &args, &[], &dir).assert_clean_failure("share one GPU");
}

/// The backend's communication methods on device buffers: NCCL on 1 rank, staged MPI on 2
/// ranks sharing the GPU (and CUDA-aware MPI on 2 ranks when FERROTRON_TEST_CUDA_AWARE=1).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn backend_comm_on_gpu() {
    if let Ok(t) = std::env::var(comm_check::CHILD) {
        let universe = mpi::initialize().expect("MPI init");
        let world = universe.world();
        let local = {
            use mpi::topology::Communicator as _;
            world.split_shared(0).rank() as usize
        };
        let be = ferrotron::backend::cuda::CudaBackend::new(local).expect("CUDA backend");
        comm_check::check(&be, &world, comm_check::transport(&t));
        return;
    }
    if no_gpu() {
        return;
    }
    need_nccl();
    let dir = scratch("cuda-comm");
    let mut cases = vec![("nccl", 1), ("staged", 1), ("staged", 2)];
    if std::env::var("FERROTRON_TEST_CUDA_AWARE").is_ok_and(|v| v == "1") {
        cases.push(("cuda-aware", 2));
    }
    for (t, np) in cases {
        let out = comm_check::spawn("backend_comm_on_gpu", np, t, &dir);
        out.assert_ok();
        let passed = out.all().matches("comm check passed").count();
        assert_eq!(passed, np, "{t} on {np} ranks:\n{}", out.all());
    }
}

/// bf16 GEMMs through the trainer (the weights pinned as bf16 once per pipeline run, sharded
/// over TP on two ranks, the LM head in chunks of 7 rows) track the fp32 run within bf16's
/// tolerance (as `cuda_model`'s reduced-precision test: 2e-2 relative per step).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn bf16_training_tracks_fp32() {
    if no_gpu() {
        return;
    }
    let dir = scratch("cuda-bf16");
    let cfg = tiny_config(&dir, "");
    let (base, _) = run(1, &dir, &cfg, "fp32", &[]);
    let bf16 = ["train.precision=\"bf16\"".to_string()];
    let chunked = [
        "train.precision=\"bf16\"".to_string(),
        "parallel.tp=2".to_string(),
        "train.head_chunk_rows=7".to_string(),
    ];
    for (name, np, sets) in [("bf16", 1, &bf16[..]), ("bf16-tp2", 2, &chunked[..])] {
        let (l, _) = run(np, &dir, &cfg, name, sets);
        assert_eq!(l.len(), base.len(), "{name}");
        for (s, (a, b)) in l.iter().zip(&base).enumerate() {
            assert!(
                ((a - b) / b).abs() <= 2e-2,
                "{name} step {}: {a} vs fp32 {b}",
                s + 1
            );
        }
    }
}
