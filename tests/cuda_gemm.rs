//! cuBLASLt GEMM (`backend::cuda::gemm`) against its CPU twin `backend::cpu::matmul::matmul`
//! on random data: plain, transposed operands, strided (column-slice) views at unaligned
//! offsets, accumulate on/off, strided batches (attention-shaped), bias epilogue, bf16 inputs,
//! and the backend's GELU epilogues (`train.fuse_gelu`) against the CPU backend.
//!
//! Tolerances, as ‖gpu − cpu‖ / ‖cpu‖ over the whole destination buffer (padding included, so
//! untouched elements must stay untouched):
//! - f32, TF32 off (`CUBLAS_COMPUTE_32F`): 1e-5 (only summation order differs).
//! - TF32 on: 5e-3 (inputs rounded to a 10-bit mantissa, 2^-11 ≈ 5e-4 per product).
//! - bf16 inputs vs the CPU on the *unrounded* f32 inputs: 1e-2 (8-bit mantissa, each input
//!   rounded by up to 2^-9 ≈ 2e-3 relative; random errors add up to ≈ 3e-3).
//! - bf16 inputs vs the CPU on the bf16-*rounded* inputs: 1e-5 with f32 output (fp32
//!   accumulation), 1e-2 with bf16 output (output rounding ≈ 2e-3).
//!
//! Needs a CUDA device: every test is ignored (shown as such) unless asked for with
//! `--include-ignored` (as `scripts/gpu-session.sh` does), and then a missing device fails it.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use ferrotron::backend::cpu::matmul::{matmul as cpu_matmul, Mat};
use ferrotron::backend::cuda::gemm::{Batch, GMat, Gemm, Opts};
use half::bf16;

const F32_TOL: f64 = 1e-5;
const BF16_TOL: f64 = 1e-2;

struct Gpu {
    stream: Arc<CudaStream>,
    gemm: Gemm,
}

/// The device: these tests are ignored unless asked for, and then a missing device fails them.
fn gpu() -> Option<Gpu> {
    if let Err(e) = ferrotron::backend::cuda::device_count() {
        panic!("no usable CUDA device ({e})");
    }
    let ctx = CudaContext::new(0).expect("CUDA context");
    let stream = ctx.default_stream();
    let gemm = Gemm::new(stream.clone()).expect("cuBLASLt handle");
    Some(Gpu { stream, gemm })
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// xorshift64*: uniform values in [-1, 1).
struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

/// A host operand: logical `[rows, cols]`, stored row-major (transposed or not) with row stride
/// `rs = stored cols + pad`, starting `offset` elements into `data` (the rest is random junk).
struct Op {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    rs: usize,
    offset: usize,
    transposed: bool,
}

impl Op {
    fn new(rng: &mut Rng, rows: usize, cols: usize, t: bool, pad: usize, offset: usize) -> Self {
        let (sr, sc) = if t { (cols, rows) } else { (rows, cols) };
        let rs = sc + pad;
        let data = rng.vec(offset + sr * rs + 3);
        Self {
            data,
            rows,
            cols,
            rs,
            offset,
            transposed: t,
        }
    }
    fn stored(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    fn cpu<'a>(&self, data: &'a [f32]) -> Mat<'a> {
        let (sr, sc) = self.stored();
        let m = Mat::strided(&data[self.offset..], sr, sc, self.rs);
        if self.transposed {
            m.t()
        } else {
            m
        }
    }
}

fn gview<'a, T>(op: &Op, view: &'a cudarc::driver::CudaView<'a, T>) -> GMat<'a, T> {
    let (sr, sc) = op.stored();
    let g = GMat::strided(view, sr, sc, op.rs);
    if op.transposed {
        g.t()
    } else {
        g
    }
}

/// One f32 product on both sides; returns the relative error.
#[allow(clippy::too_many_arguments)]
fn check_f32(
    g: &Gpu,
    seed: u64,
    (m, k, n): (usize, usize, usize),
    (ta, tb): (bool, bool),
    pad: usize,
    offset: usize,
    accumulate: bool,
) -> f64 {
    let mut rng = Rng(seed);
    let a = Op::new(&mut rng, m, k, ta, pad, offset);
    let b = Op::new(&mut rng, k, n, tb, pad, offset);
    let dst_rs = n + pad;
    let dst0 = rng.vec(m * dst_rs);

    let mut want = dst0.clone();
    cpu_matmul(
        &mut want,
        dst_rs,
        a.cpu(&a.data),
        b.cpu(&b.data),
        accumulate,
        threads(),
    );

    let da = g.stream.clone_htod(&a.data).unwrap();
    let db = g.stream.clone_htod(&b.data).unwrap();
    let mut dd = g.stream.clone_htod(&dst0).unwrap();
    let (va, vb) = (da.slice(a.offset..), db.slice(b.offset..));
    g.gemm
        .matmul_f32(&mut dd, dst_rs, gview(&a, &va), gview(&b, &vb), accumulate)
        .unwrap();
    let got = g.stream.clone_dtoh(&dd).unwrap();
    rel(&got, &want)
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn f32_matches_cpu_all_layouts() {
    let Some(g) = gpu() else { return };
    let mut seed = 1;
    for &(m, k, n) in &[(37, 53, 29), (1, 7, 1), (64, 64, 64)] {
        for ta in [false, true] {
            for tb in [false, true] {
                for (pad, offset) in [(0, 0), (5, 1), (16, 3)] {
                    for acc in [false, true] {
                        seed += 1;
                        let e = check_f32(&g, seed, (m, k, n), (ta, tb), pad, offset, acc);
                        assert!(
                            e <= F32_TOL,
                            "{m}x{k}x{n} ta={ta} tb={tb} pad={pad} off={offset} acc={acc}: rel {e:e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn f32_large_matches_cpu() {
    let Some(g) = gpu() else { return };
    for (i, (ta, tb)) in [(false, false), (false, true), (true, false)]
        .into_iter()
        .enumerate()
    {
        for acc in [false, true] {
            let e = check_f32(&g, 100 + i as u64, (512, 768, 1024), (ta, tb), 0, 0, acc);
            eprintln!("512x768x1024 ta={ta} tb={tb} acc={acc}: rel {e:e}");
            assert!(e <= F32_TOL, "ta={ta} tb={tb} acc={acc}: rel {e:e}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn tf32_is_close_but_opt_in() {
    let Some(mut g) = gpu() else { return };
    g.gemm.set_tf32(true);
    let e = check_f32(&g, 7, (512, 768, 1024), (false, true), 0, 0, false);
    eprintln!("TF32 512x768x1024: rel {e:e}");
    assert!(e <= 5e-3, "TF32 rel {e:e}");
    g.gemm.set_tf32(false);
    let e = check_f32(&g, 7, (512, 768, 1024), (false, true), 0, 0, false);
    assert!(e <= F32_TOL, "TF32 off: rel {e:e}");
}

/// Attention shapes: Q, K, V `[B·NH, T, hd]` contiguous; S = Q·Kᵀ, then O = P·V, batched.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn batched_attention_shapes() {
    let Some(g) = gpu() else { return };
    let (bh, t, hd) = (6, 37, 24);
    let mut rng = Rng(42);
    let q = rng.vec(bh * t * hd);
    let k = rng.vec(bh * t * hd);
    let p = rng.vec(bh * t * t);
    let (dq, dk, dp) = (
        g.stream.clone_htod(&q).unwrap(),
        g.stream.clone_htod(&k).unwrap(),
        g.stream.clone_htod(&p).unwrap(),
    );
    for acc in [false, true] {
        // S[i] = Q[i] · K[i]ᵀ  ([T, hd] · [hd, T])
        let s0 = rng.vec(bh * t * t);
        let mut want = s0.clone();
        for i in 0..bh {
            let qi = Mat::new(&q[i * t * hd..], t, hd);
            let ki = Mat::new(&k[i * t * hd..], t, hd).t();
            cpu_matmul(&mut want[i * t * t..], t, qi, ki, acc, 1);
        }
        let mut ds = g.stream.clone_htod(&s0).unwrap();
        let batch = Batch {
            count: bh,
            stride_a: t * hd,
            stride_b: t * hd,
            stride_c: t * t,
        };
        g.gemm
            .matmul_batched_f32(
                &mut ds,
                t,
                GMat::new(&dq, t, hd),
                GMat::new(&dk, t, hd).t(),
                acc,
                batch,
            )
            .unwrap();
        let e = rel(&g.stream.clone_dtoh(&ds).unwrap(), &want);
        assert!(e <= F32_TOL, "Q·Kᵀ acc={acc}: rel {e:e}");

        // O[i] = P[i] · V[i]  ([T, T] · [T, hd]), V = k reused.
        let o0 = rng.vec(bh * t * hd);
        let mut want = o0.clone();
        for i in 0..bh {
            let pi = Mat::new(&p[i * t * t..], t, t);
            let vi = Mat::new(&k[i * t * hd..], t, hd);
            cpu_matmul(&mut want[i * t * hd..], hd, pi, vi, acc, 1);
        }
        let mut dout = g.stream.clone_htod(&o0).unwrap();
        let batch = Batch {
            count: bh,
            stride_a: t * t,
            stride_b: t * hd,
            stride_c: t * hd,
        };
        g.gemm
            .matmul_batched_f32(
                &mut dout,
                hd,
                GMat::new(&dp, t, t),
                GMat::new(&dk, t, hd),
                acc,
                batch,
            )
            .unwrap();
        let e = rel(&g.stream.clone_dtoh(&dout).unwrap(), &want);
        assert!(e <= F32_TOL, "P·V acc={acc}: rel {e:e}");
    }
}

/// Heads as column slices of a `[T, 3C]` QKV row (no reshuffle), and a broadcast operand
/// (batch stride 0).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn batched_strided_heads_and_broadcast() {
    let Some(g) = gpu() else { return };
    let (t, nh, hd) = (29, 4, 12);
    let c = nh * hd;
    let mut rng = Rng(9);
    let qkv = rng.vec(t * 3 * c);
    let dqkv = g.stream.clone_htod(&qkv).unwrap();
    // S[h] = Q_h · K_hᵀ with Q_h = qkv[:, h*hd..], K_h = qkv[:, C + h*hd..], row stride 3C.
    let mut want = vec![0.0; nh * t * t];
    for h in 0..nh {
        let qh = Mat::strided(&qkv[h * hd..], t, hd, 3 * c);
        let kh = Mat::strided(&qkv[c + h * hd..], t, hd, 3 * c).t();
        cpu_matmul(&mut want[h * t * t..], t, qh, kh, false, 1);
    }
    let mut ds = g.stream.alloc_zeros::<f32>(nh * t * t).unwrap();
    let (vq, vk) = (dqkv.slice(..), dqkv.slice(c..));
    let batch = Batch {
        count: nh,
        stride_a: hd,
        stride_b: hd,
        stride_c: t * t,
    };
    g.gemm
        .matmul_batched_f32(
            &mut ds,
            t,
            GMat::strided(&vq, t, hd, 3 * c),
            GMat::strided(&vk, t, hd, 3 * c).t(),
            false,
            batch,
        )
        .unwrap();
    let e = rel(&g.stream.clone_dtoh(&ds).unwrap(), &want);
    assert!(e <= F32_TOL, "strided heads: rel {e:e}");

    // Broadcast: Y[i] = X[i] · W for one W.
    let (bt, m, k, n) = (3, 17, 33, 21);
    let x = rng.vec(bt * m * k);
    let w = rng.vec(k * n);
    let mut want = vec![0.0; bt * m * n];
    for i in 0..bt {
        let xi = Mat::new(&x[i * m * k..], m, k);
        cpu_matmul(&mut want[i * m * n..], n, xi, Mat::new(&w, k, n), false, 1);
    }
    let (dx, dw) = (
        g.stream.clone_htod(&x).unwrap(),
        g.stream.clone_htod(&w).unwrap(),
    );
    let mut dy = g.stream.alloc_zeros::<f32>(bt * m * n).unwrap();
    let batch = Batch {
        count: bt,
        stride_a: m * k,
        stride_b: 0,
        stride_c: m * n,
    };
    g.gemm
        .matmul_batched_f32(
            &mut dy,
            n,
            GMat::new(&dx, m, k),
            GMat::new(&dw, k, n),
            false,
            batch,
        )
        .unwrap();
    let e = rel(&g.stream.clone_dtoh(&dy).unwrap(), &want);
    assert!(e <= F32_TOL, "broadcast: rel {e:e}");
}

/// `dst = a·b + bias` and `dst += a·b + bias`, f32.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn bias_epilogue_f32() {
    let Some(g) = gpu() else { return };
    let (m, k, n) = (37, 53, 29);
    let mut rng = Rng(5);
    let a = rng.vec(m * k);
    let b = rng.vec(n * k); // used as bᵀ: weights stored [n, k] as in nn.Linear
    let bias = rng.vec(n);
    let dst0 = rng.vec(m * n);
    let (da, db, dbias) = (
        g.stream.clone_htod(&a).unwrap(),
        g.stream.clone_htod(&b).unwrap(),
        g.stream.clone_htod(&bias).unwrap(),
    );
    for acc in [false, true] {
        let mut want = dst0.clone();
        cpu_matmul(
            &mut want,
            n,
            Mat::new(&a, m, k),
            Mat::new(&b, n, k).t(),
            acc,
            1,
        );
        for row in want.chunks_mut(n) {
            for (x, bj) in row.iter_mut().zip(&bias) {
                *x += bj;
            }
        }
        let mut dd = g.stream.clone_htod(&dst0).unwrap();
        let opts = Opts {
            accumulate: acc,
            batch: None,
            bias: Some(&dbias),
            gelu: None,
        };
        g.gemm
            .matmul(
                &mut dd,
                n,
                GMat::new(&da, m, k),
                GMat::new(&db, n, k).t(),
                opts,
            )
            .unwrap();
        let e = rel(&g.stream.clone_dtoh(&dd).unwrap(), &want);
        assert!(e <= F32_TOL, "bias acc={acc}: rel {e:e}");
    }
}

/// bf16 inputs with f32 and bf16 outputs, plain and transposed, with and without bias.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn bf16_matches_cpu() {
    let Some(g) = gpu() else { return };
    for &(m, k, n) in &[(37, 53, 29), (512, 768, 1024)] {
        for (ta, tb) in [(false, false), (false, true), (true, false)] {
            let mut rng = Rng((m + ta as usize * 2 + tb as usize) as u64);
            let a = Op::new(&mut rng, m, k, ta, 0, 0);
            let b = Op::new(&mut rng, k, n, tb, 0, 0);
            let bias = rng.vec(n);
            let with_bias = |mut v: Vec<f32>| {
                for row in v.chunks_mut(n) {
                    for (x, bj) in row.iter_mut().zip(&bias) {
                        *x += bj;
                    }
                }
                v
            };
            let reference = |ad: &[f32], bd: &[f32]| {
                let mut out = vec![0.0; m * n];
                cpu_matmul(&mut out, n, a.cpu(ad), b.cpu(bd), false, threads());
                out
            };
            let exact = reference(&a.data, &b.data);
            let (ar, br) = (round_bf16(&a.data), round_bf16(&b.data));
            let rounded = reference(&ar, &br);

            let to_bf = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
            let da: CudaSlice<bf16> = g.stream.clone_htod(&to_bf(&a.data)).unwrap();
            let db: CudaSlice<bf16> = g.stream.clone_htod(&to_bf(&b.data)).unwrap();
            let (va, vb) = (da.slice(..), db.slice(..));
            let tag = format!("{m}x{k}x{n} ta={ta} tb={tb}");

            // bf16 × bf16 → f32, then with an f32 bias.
            let mut d32 = g.stream.alloc_zeros::<f32>(m * n).unwrap();
            g.gemm
                .matmul(&mut d32, n, gview(&a, &va), gview(&b, &vb), Opts::default())
                .unwrap();
            let got = g.stream.clone_dtoh(&d32).unwrap();
            let (e1, e2) = (rel(&got, &rounded), rel(&got, &exact));
            eprintln!("bf16→f32 {tag}: rel vs rounded {e1:e}, vs f32 {e2:e}");
            assert!(
                e1 <= F32_TOL && e2 <= BF16_TOL,
                "bf16→f32 {tag}: {e1:e} {e2:e}"
            );

            let dbias = g.stream.clone_htod(&bias).unwrap();
            let opts = Opts {
                bias: Some(&dbias),
                ..Opts::default()
            };
            g.gemm
                .matmul(&mut d32, n, gview(&a, &va), gview(&b, &vb), opts)
                .unwrap();
            let got = g.stream.clone_dtoh(&d32).unwrap();
            let e = rel(&got, &with_bias(rounded.clone()));
            assert!(e <= F32_TOL, "bf16→f32 + bias {tag}: {e:e}");

            // bf16 × bf16 → bf16, then with a bf16 bias.
            let mut d16 = g.stream.alloc_zeros::<bf16>(m * n).unwrap();
            g.gemm
                .matmul(&mut d16, n, gview(&a, &va), gview(&b, &vb), Opts::default())
                .unwrap();
            let got: Vec<f32> = g
                .stream
                .clone_dtoh(&d16)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let (e1, e2) = (rel(&got, &rounded), rel(&got, &exact));
            eprintln!("bf16→bf16 {tag}: rel vs rounded {e1:e}, vs f32 {e2:e}");
            assert!(
                e1 <= BF16_TOL && e2 <= BF16_TOL,
                "bf16→bf16 {tag}: {e1:e} {e2:e}"
            );

            let dbias16 = g.stream.clone_htod(&to_bf(&bias)).unwrap();
            let opts = Opts {
                bias: Some(&dbias16),
                ..Opts::default()
            };
            g.gemm
                .matmul(&mut d16, n, gview(&a, &va), gview(&b, &vb), opts)
                .unwrap();
            let got: Vec<f32> = g
                .stream
                .clone_dtoh(&d16)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let e = rel(&got, &with_bias(rounded.clone()));
            assert!(e <= BF16_TOL, "bf16→bf16 + bias {tag}: {e:e}");
        }
    }
}

/// k = 0 zeroes (or keeps) dst; bad shapes are errors, not panics or device faults.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn edge_cases_and_errors() {
    let Some(g) = gpu() else { return };
    let empty = g.stream.alloc_zeros::<f32>(1).unwrap();
    let mut dst = g.stream.clone_htod(&[1.0f32; 12]).unwrap();
    // [3, 0] · [0, 3] into rows 4 apart: the 3x3 block becomes 0, column 3 stays 1.
    g.gemm
        .matmul_f32(
            &mut dst,
            4,
            GMat::new(&empty, 3, 0),
            GMat::new(&empty, 0, 3),
            false,
        )
        .unwrap();
    let got = g.stream.clone_dtoh(&dst).unwrap();
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, if i % 4 == 3 { 1.0 } else { 0.0 }, "element {i}");
    }

    let a = g.stream.alloc_zeros::<f32>(6).unwrap();
    let mut d = g.stream.alloc_zeros::<f32>(4).unwrap();
    // Inner dimensions differ.
    let err = g
        .gemm
        .matmul_f32(&mut d, 2, GMat::new(&a, 2, 3), GMat::new(&a, 2, 3), false)
        .unwrap_err();
    assert!(format!("{err:#}").contains("inner dimensions"), "{err:#}");
    // View larger than its buffer.
    let err = g
        .gemm
        .matmul_f32(&mut d, 4, GMat::new(&a, 2, 3), GMat::new(&a, 3, 4), false)
        .unwrap_err();
    assert!(format!("{err:#}").contains("needs"), "{err:#}");
    // dst too small.
    let mut tiny = g.stream.alloc_zeros::<f32>(3).unwrap();
    let err = g
        .gemm
        .matmul_f32(
            &mut tiny,
            2,
            GMat::new(&a, 2, 3),
            GMat::new(&a, 3, 2),
            false,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("dst needs"), "{err:#}");
    // Row stride below the row length.
    let err = g
        .gemm
        .matmul_f32(
            &mut d,
            2,
            GMat::strided(&a, 2, 3, 2),
            GMat::new(&a, 3, 2),
            false,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("row stride"), "{err:#}");
    // GELU epilogues: an auxiliary matrix smaller than dst, or an accumulating product.
    use ferrotron::backend::cuda::gemm::GeluAux;
    let mut short = g.stream.alloc_zeros::<f32>(3).unwrap();
    let opts = Opts {
        gelu: Some(GeluAux::Forward(&mut short)),
        ..Opts::default()
    };
    let err = g
        .gemm
        .matmul(&mut d, 2, GMat::new(&a, 2, 3), GMat::new(&a, 3, 2), opts)
        .unwrap_err();
    assert!(format!("{err:#}").contains("auxiliary"), "{err:#}");
    let opts = Opts {
        accumulate: true,
        gelu: Some(GeluAux::Backward(&a)),
        ..Opts::default()
    };
    let err = g
        .gemm
        .matmul(&mut d, 2, GMat::new(&a, 2, 3), GMat::new(&a, 3, 2), opts)
        .unwrap_err();
    assert!(format!("{err:#}").contains("overwrite"), "{err:#}");
}

/// The MLP's GELU epilogues through the backend (`train.fuse_gelu`): `linear_gelu_forward`
/// (`pre = x·W + b`, `out = gelu(pre)`) and `linear_backward_dgelu`
/// (`dpre = (dy·Wᵀ) ⊙ gelu'(pre)`, `dW += xᵀ·dy`, `db += Σ dy`) against the CPU backend, fused
/// and unfused (the separate kernels), in exact fp32 (1e-5) and with bf16 GEMMs (1e-2 against
/// the CPU on unrounded inputs). The weight and bias sit at unaligned offsets of one parameter
/// buffer, as in the model. With exact fp32 cuBLASLt must take the epilogues (the test fails
/// if the backend fell back).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn gelu_epilogues_match_cpu() {
    use ferrotron::backend::cuda::CudaBackend;
    use ferrotron::backend::prelude::*;
    use ferrotron::backend::{cpu::Cpu, Region};
    use ferrotron::config::Precision;
    if gpu().is_none() {
        return;
    }
    let cpu = Cpu::new(threads());
    let (n, ic, oc) = (37, 64, 256);
    let mut r = Rng(17);
    let w = Region {
        off: 3,
        len: ic * oc,
    };
    let b = Region {
        off: 3 + ic * oc,
        len: oc,
    };
    let p = r
        .vec(5 + ic * oc + oc)
        .iter()
        .map(|v| v * 0.2)
        .collect::<Vec<_>>();
    let x = r.vec(n * ic);
    let g0: Vec<f32> = r.vec(p.len()).iter().map(|v| v * 0.1).collect();

    // CPU reference: forward, then the projection's backward (input x = gelu(pre), so the
    // layer's "ic" is the MLP width): here a [n, oc] → [n, ic] projection with weight wp.
    let (mut pre_c, mut out_c) = (cpu.zeros(n * oc).unwrap(), cpu.zeros(n * oc).unwrap());
    let (x_c, p_c) = (cpu.upload(&x).unwrap(), cpu.upload(&p).unwrap());
    cpu.linear_gelu_forward(&mut pre_c, &mut out_c, &x_c, &p_c, w, b, n, ic, oc)
        .unwrap();
    let wp = Region {
        off: 3,
        len: oc * ic,
    };
    let bp = Region {
        off: 3 + oc * ic,
        len: ic,
    };
    let dyp = r.vec(n * ic);
    let (mut dpre_c, mut g_c) = (cpu.zeros(n * oc).unwrap(), cpu.upload(&g0).unwrap());
    let dyp_c = cpu.upload(&dyp).unwrap();
    cpu.linear_backward_dgelu(
        &mut dpre_c,
        &mut g_c,
        wp,
        bp,
        &dyp_c,
        &out_c,
        &pre_c,
        &p_c,
        wp,
        n,
        oc,
        ic,
    )
    .unwrap();

    for (prec, tol) in [(Precision::Fp32, F32_TOL), (Precision::Bf16, BF16_TOL)] {
        for fuse in [false, true] {
            let be = CudaBackend::with_options(0, prec)
                .unwrap()
                .with_fused_gelu(fuse);
            let (p_d, x_d) = (be.upload(&p).unwrap(), be.upload(&x).unwrap());
            let (mut pre, mut out) = (be.zeros(n * oc).unwrap(), be.zeros(n * oc).unwrap());
            be.linear_gelu_forward(&mut pre, &mut out, &x_d, &p_d, w, b, n, ic, oc)
                .unwrap();
            let what = format!("{prec:?}, fused {fuse}");
            for (name, got, want) in [("pre", &pre, &pre_c), ("gelu", &out, &out_c)] {
                let e = rel(&be.download(got).unwrap(), want);
                eprintln!("{what}: {name} rel {e:.2e}");
                assert!(e <= tol, "{what}: {name} rel {e:.3e} > {tol:.0e}");
            }
            // The backward from the CPU's forward values, so only the backward is measured.
            let (pre_d, out_d) = (be.upload(&pre_c).unwrap(), be.upload(&out_c).unwrap());
            let (mut dpre, mut g) = (be.zeros(n * oc).unwrap(), be.upload(&g0).unwrap());
            let dyp_d = be.upload(&dyp).unwrap();
            be.linear_backward_dgelu(
                &mut dpre, &mut g, wp, bp, &dyp_d, &out_d, &pre_d, &p_d, wp, n, oc, ic,
            )
            .unwrap();
            for (name, got, want) in [("dpre", &dpre, &dpre_c), ("grads", &g, &g_c)] {
                let e = rel(&be.download(got).unwrap(), want);
                eprintln!("{what}: {name} rel {e:.2e}");
                assert!(e <= tol, "{what}: {name} rel {e:.3e} > {tol:.0e}");
            }
            if fuse && prec == Precision::Fp32 {
                assert!(
                    be.fused_gelu_active(),
                    "cuBLASLt refused the GELU epilogues in fp32 (see the warning above)"
                );
            }
            eprintln!("{what}: epilogues in use: {}", be.fused_gelu_active());
        }
    }
}

/// Throughput (not a correctness check): `cargo test --release --test cuda_gemm -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let Some(mut g) = gpu() else { return };
    let s = 4096;
    let flop = 2.0 * (s as f64).powi(3);
    let x = g.stream.alloc_zeros::<bf16>(s * s).unwrap();
    let xf = g.stream.alloc_zeros::<f32>(s * s).unwrap();
    let mut y = g.stream.alloc_zeros::<f32>(s * s).unwrap();
    let mut time = |g: &Gpu, bf: bool, reps: usize| {
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            if bf {
                let (a, b) = (GMat::new(&x, s, s), GMat::new(&x, s, s).t());
                g.gemm.matmul(&mut y, s, a, b, Opts::default()).unwrap();
            } else {
                let (a, b) = (GMat::new(&xf, s, s), GMat::new(&xf, s, s).t());
                g.gemm.matmul_f32(&mut y, s, a, b, false).unwrap();
            }
        }
        g.stream.synchronize().unwrap();
        flop * reps as f64 / t0.elapsed().as_secs_f64() / 1e12
    };
    time(&g, true, 3);
    eprintln!("bf16→f32 4096³: {:.0} TFLOP/s", time(&g, true, 20));
    time(&g, false, 2);
    eprintln!("f32 (exact) 4096³: {:.1} TFLOP/s", time(&g, false, 5));
    g.gemm.set_tf32(true);
    time(&g, false, 2);
    eprintln!("f32 TF32 4096³: {:.0} TFLOP/s", time(&g, false, 10));
}
