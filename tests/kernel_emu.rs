//! The CUDA kernels that have not yet run on a GPU (flash attention, the vocab-parallel pieces,
//! the multi-tensor AdamW, generation's cached attention), executed on the CPU by `tests/emu/cuda_emu.h` (blocks in turn,
//! their threads as std::threads with barriers for `__syncthreads` and warp shuffles) and
//! compiled by g++ with AddressSanitizer, launched as the Rust launchers launch them, against
//! the CPU twins. This checks the kernels' arithmetic, indexing, tiling and masking (and
//! catches out-of-bounds accesses); it says nothing about speed, and the GPU tests in
//! `tests/cuda_kernels.rs` still run them on a device.
//!
//! Tolerances (‖emu − twin‖ / ‖twin‖): 1e-5 for forwards and lse, 1e-4 for the attention
//! backward (as on the GPU), 1e-6 for the embedding and AdamW; the KV cache is copied exactly.

mod common;

use common::scratch;
use ferrotron::backend::cpu::decode::{attention_cached, CachedDims};
use ferrotron::backend::cpu::kernels::attention::{self, AttnDims};
use ferrotron::backend::cpu::kernels::{flash, vocab_parallel};
use ferrotron::backend::cpu::Cpu;
use ferrotron::backend::cuda::chunks::{adam_chunks, shard_rows};
use ferrotron::backend::prelude::*;
use ferrotron::backend::{AdamStep, Region};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The harness binary, built once per test process (None, with a message, without g++).
fn harness() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::env::temp_dir().join(format!("ferrotron-emu-{}", std::process::id()));
        let st = Command::new("g++")
            .args([
                "-std=c++20",
                "-O1",
                "-g",
                "-pthread",
                "-fsanitize=address,undefined",
            ])
            .args(["-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror"])
            .args(["-Wno-unknown-pragmas", "-Wno-unused-parameter", "-o"])
            .arg(&out)
            .arg(root.join("tests/emu/harness.cpp"))
            .status();
        match st {
            Ok(s) if s.success() => Some(out),
            Ok(s) => panic!("g++ failed to build the kernel harness ({s})"),
            Err(e) => {
                eprintln!("no g++ ({e}): skipping the kernel emulation tests");
                None
            }
        }
    })
    .as_deref()
}

fn put<T: bytemuck::Pod>(dir: &Path, name: &str, v: &[T]) {
    std::fs::write(dir.join(name), bytemuck::cast_slice(v)).unwrap();
}

fn get(dir: &Path, name: &str) -> Vec<f32> {
    let b = std::fs::read(dir.join(name)).unwrap();
    bytemuck::pod_collect_to_vec(&b)
}

fn run(bin: &Path, args: &[String]) {
    let o = Command::new(bin)
        .args(args)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "harness {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

fn check(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let r = rel(got, want);
    eprintln!("{name}: rel {r:.2e} (tol {tol:.0e})");
    assert!(r <= tol, "{name}: rel error {r:.3e} > {tol:.0e}");
}

/// xorshift floats in [-a, a).
fn vec(seed: u64, n: usize, a: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

/// Flash attention forward and backward: head sizes 8, 24 (two threads per row), 64 and 128;
/// T not a multiple of the 64-row blocks or the 32-row tiles, and T = 1.
#[test]
fn flash_attention_kernels_match_the_twins() {
    let shapes = [
        (2, 100, 128, 2),
        (1, 70, 24, 3),
        (1, 45, 48, 2),
        (1, 33, 256, 2),
        (2, 1, 64, 1),
    ];
    flash_case("flash", &shapes, [1e-5, 1e-5, 1e-4]);
}

/// The tensor-core flash attention (WMMA on bf16 operands, fp32 accumulation) against the same
/// fp32 twins, within bf16 tolerances: every operand is rounded to bf16 (2^-9 relative), so
/// outputs and gradients differ by a few 1e-3 relative, the log-sum-exp (an fp32 statistic of
/// bf16-rounded scores) by less but for T = 1, where it is one rounded score. Head sizes 16, 32, 48 and 64; T = 1; T not a multiple of the
/// 64-row blocks or 32-row tiles.
#[test]
fn flash_attention_tc_kernels_match_the_twins() {
    let shapes = [
        (2, 100, 128, 2),
        (1, 70, 48, 3),
        (1, 45, 64, 2),
        (1, 33, 192, 4),
        (2, 1, 64, 1),
    ];
    flash_case("flashtc", &shapes, [1e-2, 1e-2, 2e-2]);
}

/// Runs harness `mode` on each (B, T, C, NH) and checks out, lse and dqkv against the twins
/// with the tolerances `tol`.
fn flash_case(mode: &str, shapes: &[(usize, usize, usize, usize)], tol: [f64; 3]) {
    let Some(bin) = harness() else { return };
    for (i, &(b, t, c, nh)) in shapes.iter().enumerate() {
        let d = AttnDims { b, t, c, nh };
        let dir = scratch(&format!("{mode}{i}"));
        let qkv = vec(10 + i as u64, 3 * b * t * c, 1.5);
        let dout = vec(20 + i as u64, b * t * c, 1.0);
        put(&dir, "qkv", &qkv);
        put(&dir, "dout", &dout);
        let args = [b, t, c, nh].map(|x| x.to_string());
        let mut a = vec![mode.to_string()];
        a.extend(args);
        a.push(dir.to_str().unwrap().into());
        run(bin, &a);
        let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
        attention::forward(
            &mut out,
            &mut att,
            &qkv,
            d,
            &ferrotron::backend::cpu::matmul::Gemm::builtin(1),
        );
        let mut dqkv = vec![0.0; 3 * b * t * c];
        attention::backward(
            &mut dqkv,
            &dout,
            &qkv,
            &att,
            d,
            &ferrotron::backend::cpu::matmul::Gemm::builtin(1),
        );
        let (mut y, mut lse) = (vec![0.0; b * t * c], vec![0.0; flash::saved_len(d)]);
        flash::forward(&mut y, &mut lse, &qkv, d);
        let name = format!("{mode} b{b} t{t} c{c} nh{nh}");
        check(&format!("{name} out"), &get(&dir, "out"), &out, tol[0]);
        check(&format!("{name} lse"), &get(&dir, "lse"), &lse, tol[1]);
        check(&format!("{name} dqkv"), &get(&dir, "dqkv"), &dqkv, tol[2]);
    }
}

/// Vocab-parallel embedding forward, cross-entropy partials and gradient of a shard holding
/// rows 64..128 of a 150-word vocabulary (tokens and targets inside and outside it; padded
/// columns past 150 in the last shard).
#[test]
fn vocab_parallel_kernels_match_the_twins() {
    let Some(bin) = harness() else { return };
    for (i, (n, t, c, vl, v0, v)) in [(40, 8, 16, 64, 64, 150), (24, 6, 8, 64, 128, 150)]
        .into_iter()
        .enumerate()
    {
        let dir = scratch(&format!("vp{i}"));
        let tok: Vec<u32> = (0..n).map(|k| ((k * 37 + 11) % v) as u32).collect();
        let wte = vec(30, vl * c, 1.0);
        let wpe = vec(31, t * c, 1.0);
        let z = vec(32, n * vl, 4.0);
        let mut stats = vec![0.0; 3 * n];
        vocab_parallel::xent_partial(&z, &mut stats, &tok, vl, v0, v);
        let ms: Vec<f32> = (0..n)
            .flat_map(|k| [stats[3 * k] + 0.5, 1.0 / (stats[3 * k + 1] + 2.0)])
            .collect();
        put(&dir, "rows", &shard_rows(&tok, v0, vl));
        put(&dir, "wte", &wte);
        put(&dir, "wpe", &wpe);
        put(&dir, "z", &z);
        let y: Vec<i32> = tok.iter().map(|&x| x as i32).collect();
        put(&dir, "targets", &y);
        put(&dir, "ms", &ms);
        put(&dir, "scale", &[0.25f32]);
        let mut a = vec!["vp".to_string()];
        a.extend([n, t, c, vl, v0, v].map(|x| x.to_string()));
        a.push(dir.to_str().unwrap().into());
        run(bin, &a);
        let mut emb = vec![0.0; n * c];
        vocab_parallel::embedding_forward(&mut emb, &tok, &wte, Some(&wpe), t, c, v0);
        check("vp embedding", &get(&dir, "emb"), &emb, 1e-6);
        check("vp xent partial", &get(&dir, "stats"), &stats, 1e-5);
        let mut zg = z.clone();
        vocab_parallel::xent_grad(&mut zg, &ms, &tok, vl, v0, v, 0.25);
        check("vp xent grad", &get(&dir, "zgrad"), &zg, 1e-5);
    }
}

/// The multi-tensor AdamW over a chunk table (a tensor longer than a chunk, decayed and plain
/// tensors, a gap no tensor covers) against the CPU backend's per-region AdamW.
#[test]
fn adamw_multi_kernel_matches_the_twin() {
    let Some(bin) = harness() else { return };
    let big = ferrotron::backend::cuda::chunks::ADAM_CHUNK + 1000;
    let ranges = [
        (Region { off: 0, len: 100 }, false),
        (Region { off: 100, len: big }, true),
        (
            Region {
                off: 200 + big,
                len: 300,
            },
            false,
        ),
    ];
    let n = 600 + big;
    let dir = scratch("adamw");
    let (p, g) = (vec(40, n, 1.0), vec(41, n, 0.1));
    let (m, v) = (
        vec(42, n, 0.01),
        vec(43, n, 0.01).iter().map(|x| x.abs()).collect(),
    );
    let s = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        decay_factor: 1.0 - 1e-4,
        step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
        bc2_sqrt: (1.0 - 0.95f32.powi(3)).sqrt(),
    };
    let table = adam_chunks(&ranges, n).unwrap();
    for (name, x) in [("p", &p), ("g", &g), ("m", &m), ("v", &v)] {
        put(&dir, name, x);
    }
    put(&dir, "table", &table);
    let sc = [
        s.beta1,
        s.beta2,
        s.eps,
        s.decay_factor,
        s.step_size,
        s.bc2_sqrt,
    ];
    put(&dir, "scalars", &sc);
    let chunks = table.len() / 2;
    run(
        bin,
        &[
            "adamw".into(),
            n.to_string(),
            chunks.to_string(),
            dir.to_str().unwrap().into(),
        ],
    );
    let cpu = Cpu::new(1);
    let up = |x: &Vec<f32>| cpu.upload(x).unwrap();
    let (mut pw, mut mw, mut vw) = (up(&p), up(&m), up(&v));
    cpu.adamw_multi(&mut pw, &up(&g), &mut mw, &mut vw, &ranges, s)
        .unwrap();
    check("adamw_multi p", &get(&dir, "p"), &pw, 1e-6);
    check("adamw_multi m", &get(&dir, "m"), &mw, 1e-6);
    check("adamw_multi v", &get(&dir, "v"), &vw, 1e-6);
}

/// Generation's cached attention (`kernels/decode.cu`) against the CPU twin over a sequence's
/// life: a prefill at row 2 of a batch, one decode step, a chunk that takes the positions past
/// 128 (more than one position per thread), and another step; head sizes 16 and 64. After each
/// call the cache must equal the twin's exactly and the output within 1e-5.
#[test]
fn cached_attention_kernels_match_the_twin() {
    let Some(bin) = harness() else { return };
    for (case, &(c, nh)) in [(48usize, 3usize), (128, 2)].iter().enumerate() {
        let cap = 160;
        let dir = scratch(&format!("emu-decode-{case}"));
        let (mut kv_emu, mut kv_twin) = (vec![0.0f32; 2 * cap * c], vec![0.0f32; 2 * cap * c]);
        for (step, &(row0, rows, start)) in [(2, 37, 0), (0, 1, 37), (1, 100, 38), (0, 1, 138)]
            .iter()
            .enumerate()
        {
            let qkv = vec(
                100 * case as u64 + step as u64 + 1,
                (row0 + rows) * 3 * c,
                1.0,
            );
            let out = vec![0.0f32; (row0 + rows) * c];
            let d = CachedDims {
                row0,
                rows,
                start,
                cap,
                c,
                nh,
            };
            put(&dir, "qkv", &qkv);
            put(&dir, "kv", &kv_emu);
            put(&dir, "out", &out);
            let args = [row0, rows, start, cap, c, nh].map(|x| x.to_string());
            let mut a = vec!["decode".to_string()];
            a.extend(args);
            a.push(dir.to_string_lossy().into_owned());
            run(bin, &a);
            let mut want = out.clone();
            attention_cached(&mut want, &qkv, &mut kv_twin, d);
            kv_emu = get(&dir, "kv");
            assert_eq!(kv_emu, kv_twin, "KV cache after step {step} (C {c})");
            check(
                &format!("cached attention step {step} (C {c}, NH {nh})"),
                &get(&dir, "out"),
                &want,
                1e-5,
            );
        }
    }
}
