//! CUDA kernels: (a) every `kernels/*.cu` compiles with NVRTC for sm_80 and sm_90 without
//! errors or warnings (runs everywhere; needs libnvrtc, see `scripts/install-nvrtc.sh`, or set
//! `FERROTRON_SKIP_NVRTC=1` to skip); (b) each kernel against its CPU twin on random inputs:
//! these need a CUDA device, are ignored unless run with `--include-ignored` (as
//! `scripts/gpu-session.sh` does), and then fail without one.
//!
//! Tolerances, as ‖gpu − cpu‖ / ‖cpu‖ per tensor: 1e-6 for sums of a few terms in the same
//! order (embedding, bias/column sums, adamw) and exact for permutations and casts; 1e-5 for
//! layernorm, gelu (CPU uses a polynomial tanh, GPU `tanhf`) and the softmax/cross-entropy
//! forward (exp-based, different reduction trees); 1e-4 for the attention backward (the
//! softmax backward subtracts nearly equal terms).

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use ferrotron::backend::cpu::kernels::{attention, embedding, layernorm, loss, mlp};
use ferrotron::backend::cuda::kernels::{
    AttnShape, EmbeddingSegments, Kernels, FUNCTIONS, SUMSQ_PARTS,
};
use ferrotron::backend::cuda::{self, nvrtc};
use ferrotron::model::gpt2::{Gpt2Config, ParamLayout};
use ferrotron::optim::{adamw, clip};
use std::sync::Arc;

#[test]
fn compile_all_kernels_with_nvrtc() {
    if let Err(e) = nvrtc::ensure_nvrtc() {
        if std::env::var("FERROTRON_SKIP_NVRTC").as_deref() == Ok("1") {
            eprintln!("{e:#}: skipping (FERROTRON_SKIP_NVRTC=1)");
            return;
        }
        panic!(
            "{e:#}\nRun `eval \"$(scripts/install-nvrtc.sh --env)\"` (installs NVRTC and the CUDA \
             headers into .cache/nvrtc and exports LD_LIBRARY_PATH and FERROTRON_CUDA_INCLUDE), \
             or set FERROTRON_SKIP_NVRTC=1 to skip this test."
        );
    }
    let (major, minor) = nvrtc::nvrtc_version().expect("nvrtc version");
    let inc = nvrtc::find_cuda_include().unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("NVRTC {major}.{minor}, CUDA headers from {}", inc.display());
    // As `Kernels::load`: crt/mma.h may live in another directory (a later include path).
    let mut incs = vec![inc.clone()];
    incs.extend(nvrtc::find_mma_include().filter(|d| *d != inc));
    for arch in ["sm_80", "sm_90"] {
        for k in nvrtc::KERNELS {
            let (ptx, regs) =
                nvrtc::compile_with_registers(k, arch, &incs).unwrap_or_else(|e| panic!("{e:#}"));
            let (_, names) = FUNCTIONS
                .iter()
                .find(|(f, _)| *f == k.name)
                .unwrap_or_else(|| panic!("{}.cu is not in kernels::FUNCTIONS", k.name));
            for name in names.iter() {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "{}.cu ({arch}): no kernel {name} in the PTX",
                    k.name
                );
            }
            registers_fit(k, names, arch, &regs, &ptx);
        }
    }
}

/// Every kernel's registers fit the blocks it may be launched with (an SM has 65,536, given
/// out per warp in steps of 256, i.e. per thread in steps of 8): blocks of up to 1024 threads,
/// or of its `__launch_bounds__` (`.maxntid` in the PTX). Otherwise the launch fails on the GPU
/// with "too many resources requested", which no CPU test would show.
fn registers_fit(
    k: &nvrtc::KernelSource,
    names: &[&str],
    arch: &str,
    regs: &[(String, u32)],
    ptx: &str,
) {
    for name in names {
        assert!(
            regs.iter().any(|(n, _)| n == name),
            "{}.cu ({arch}): no ptxas register report for {name}",
            k.name
        );
    }
    for &(ref name, r) in regs {
        let head = ptx
            .split(&format!(".entry {name}("))
            .nth(1)
            .and_then(|rest| rest.split('{').next())
            .unwrap_or_else(|| panic!("{name}: no entry in the PTX"));
        let threads: u32 = head
            .split(".maxntid")
            .nth(1)
            .and_then(|m| m.trim_start().split([',', ' ', '\n']).next())
            .map_or(1024, |n| n.trim().parse().expect(".maxntid"));
        let per_thread = r.div_ceil(8) * 8;
        assert!(
            per_thread * threads <= 65536,
            "{}.cu ({arch}): {name} uses {r} registers a thread; blocks of {threads} threads \
             would need {} of 65536",
            k.name,
            per_thread * threads
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GPU tests

struct Gpu {
    stream: Arc<CudaStream>,
    k: Kernels,
}

/// The device and the loaded kernels: these tests are ignored unless asked for, and then a
/// missing device fails them.
fn gpu() -> Option<Gpu> {
    if let Err(e) = cuda::device_count() {
        panic!("no usable CUDA device ({e:#})");
    }
    let ctx = CudaContext::new(0).expect("CUDA context");
    let stream = ctx.default_stream();
    let arch = cuda::kernels::device_arch(&ctx).expect("arch");
    let inc = nvrtc::find_cuda_include().unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("device arch {arch}, CUDA headers from {}", inc.display());
    let k = Kernels::load(&ctx, stream.clone(), &arch).unwrap_or_else(|e| panic!("{e:#}"));
    Some(Gpu { stream, k })
}

impl Gpu {
    fn up<T: cudarc::driver::DeviceRepr>(&self, x: &[T]) -> CudaSlice<T> {
        self.stream.clone_htod(x).expect("htod")
    }
    fn down<T: cudarc::driver::DeviceRepr + Default + Clone>(&self, x: &CudaSlice<T>) -> Vec<T> {
        self.stream.synchronize().expect("sync");
        self.stream.clone_dtoh(x).expect("dtoh")
    }
}

/// xorshift64* uniform floats in [-a, a).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn f(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(a)).collect()
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % n as u64) as u32
    }
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut w) = (0.0f64, 0.0f64);
    for (&g, &x) in got.iter().zip(want) {
        d += (g as f64 - x as f64).powi(2);
        w += (x as f64).powi(2);
    }
    if w == 0.0 {
        d.sqrt()
    } else {
        (d / w).sqrt()
    }
}

fn check(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let r = rel(got, want);
    eprintln!("{name}: rel {r:.2e} (tol {tol:.0e})");
    assert!(r <= tol, "{name}: rel error {r:.3e} > {tol:.0e}");
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn embedding_matches_cpu() {
    let Some(g) = gpu() else { return };
    let (b, t, c, vp) = (3, 17, 40, 64);
    let n = b * t;
    let mut r = Rng(1);
    let tok: Vec<u32> = (0..n).map(|_| r.below(50)).collect();
    let (wte, wpe) = (r.vec(vp * c, 1.0), r.vec(t * c, 1.0));
    let mut want = vec![0.0; n * c];
    embedding::forward(&mut want, &tok, &wte, &wpe, t, c);
    let tok_i: Vec<i32> = tok.iter().map(|&x| x as i32).collect();
    let (tok_d, wte_d, wpe_d) = (g.up(&tok_i), g.up(&wte), g.up(&wpe));
    let mut out = g.up(&vec![0.0f32; n * c]);
    g.k.embedding_forward(
        &mut out.as_view_mut(),
        &tok_d.as_view(),
        &wte_d.as_view(),
        &wpe_d.as_view(),
        n,
        t,
        c,
    )
    .unwrap();
    check("embedding fwd", &g.down(&out), &want, 0.0);

    let dout = r.vec(n * c, 1.0);
    let (mut dwte, mut dwpe) = (r.vec(vp * c, 1.0), r.vec(t * c, 1.0));
    let (mut dwte_d, mut dwpe_d, dout_d) = (g.up(&dwte), g.up(&dwpe), g.up(&dout));
    embedding::backward(&mut dwte, &mut dwpe, &dout, &tok, t, c);
    let seg = EmbeddingSegments::from_tokens(&tok, vp).unwrap();
    let (o, s, st) = (g.up(&seg.order), g.up(&seg.seg_start), g.up(&seg.seg_token));
    g.k.embedding_backward_wte(
        &mut dwte_d.as_view_mut(),
        &dout_d.as_view(),
        &o.as_view(),
        &s.as_view(),
        &st.as_view(),
        seg.num_segs(),
        c,
    )
    .unwrap();
    g.k.embedding_backward_wpe(&mut dwpe_d.as_view_mut(), &dout_d.as_view(), b, t, c)
        .unwrap();
    check("embedding dwte", &g.down(&dwte_d), &dwte, 1e-6);
    check("embedding dwpe", &g.down(&dwpe_d), &dwpe, 1e-6);
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn layernorm_matches_cpu() {
    let Some(g) = gpu() else { return };
    for (n, c) in [(150, 72), (300, 768)] {
        layernorm_case(&g, n, c);
    }
}

fn layernorm_case(g: &Gpu, n: usize, c: usize) {
    let mut r = Rng(2 + n as u64);
    let x: Vec<f32> = r.vec(n * c, 2.0).iter().map(|v| v + 0.5).collect();
    let (w, bias) = (r.vec(c, 1.0), r.vec(c, 1.0));
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm::forward(&mut out, &mut mean, &mut rstd, &x, &w, &bias);
    let (x_d, w_d, b_d) = (g.up(&x), g.up(&w), g.up(&bias));
    let mut out_d = g.up(&vec![0.0f32; n * c]);
    let (mut mean_d, mut rstd_d) = (g.up(&vec![0.0f32; n]), g.up(&vec![0.0f32; n]));
    g.k.layernorm_forward(
        &mut out_d.as_view_mut(),
        &mut mean_d.as_view_mut(),
        &mut rstd_d.as_view_mut(),
        &x_d.as_view(),
        &w_d.as_view(),
        &b_d.as_view(),
        n,
        c,
    )
    .unwrap();
    check("layernorm out", &g.down(&out_d), &out, 1e-5);
    check("layernorm mean", &g.down(&mean_d), &mean, 1e-5);
    check("layernorm rstd", &g.down(&rstd_d), &rstd, 1e-5);

    let dy = r.vec(n * c, 1.0);
    let (dx0, dw0, db0) = (r.vec(n * c, 1.0), r.vec(c, 1.0), r.vec(c, 1.0));
    let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
    layernorm::backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, &mean, &rstd);
    let dy_d = g.up(&dy);
    let mut results = Vec::new();
    for _ in 0..2 {
        let (mut dx_d, mut dw_d, mut db_d) = (g.up(&dx0), g.up(&dw0), g.up(&db0));
        let mut scratch = g.up(&vec![0.0f32; Kernels::layernorm_scratch_len(n, c)]);
        g.k.layernorm_backward(
            &mut dx_d.as_view_mut(),
            &mut dw_d.as_view_mut(),
            &mut db_d.as_view_mut(),
            &mut scratch.as_view_mut(),
            &dy_d.as_view(),
            &x_d.as_view(),
            &w_d.as_view(),
            &mean_d.as_view(),
            &rstd_d.as_view(),
            n,
            c,
        )
        .unwrap();
        results.push((g.down(&dx_d), g.down(&dw_d), g.down(&db_d)));
    }
    assert_eq!(
        results[0], results[1],
        "layernorm backward is not deterministic"
    );
    check("layernorm dx", &results[0].0, &dx, 1e-5);
    check("layernorm dw", &results[0].1, &dw, 1e-5);
    check("layernorm db", &results[0].2, &db, 1e-6);
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn gelu_matches_cpu() {
    let Some(g) = gpu() else { return };
    let n = 10_007;
    let mut r = Rng(3);
    let (x, dy) = (r.vec(n, 5.0), r.vec(n, 1.0));
    let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
    mlp::gelu_forward(&mut y, &x);
    mlp::gelu_backward(&mut dx, &x, &dy);
    let (x_d, dy_d) = (g.up(&x), g.up(&dy));
    let (mut y_d, mut dx_d) = (g.up(&vec![0.0f32; n]), g.up(&vec![0.0f32; n]));
    g.k.gelu_forward(&mut y_d.as_view_mut(), &x_d.as_view())
        .unwrap();
    g.k.gelu_backward(&mut dx_d.as_view_mut(), &x_d.as_view(), &dy_d.as_view())
        .unwrap();
    check("gelu fwd", &g.down(&y_d), &y, 1e-5);
    check("gelu bwd", &g.down(&dx_d), &dx, 1e-5);
}

/// Host `out[m, n] = op(a) · op(b)` with f64 accumulation; `op` transposes when asked.
/// a is `[m, k]` (or `[k, m]` when `ta`), b is `[k, n]` (or `[n, k]` when `tb`).
fn mm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// Per-head batched `mm` over `bh` heads.
#[allow(clippy::too_many_arguments)]
fn bmm(
    a: &[f32],
    b: &[f32],
    bh: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Vec<f32> {
    (0..bh)
        .flat_map(|h| {
            mm(
                &a[h * m * k..][..m * k],
                &b[h * k * n..][..k * n],
                m,
                k,
                n,
                ta,
                tb,
            )
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn attention_matches_cpu() {
    let Some(g) = gpu() else { return };
    // T < 32 and T > 32 (rows longer than a warp).
    let shapes = [(2, 19, 48, 4), (1, 70, 64, 2)];
    for (i, (b, t, c, nh)) in shapes.into_iter().enumerate() {
        attention_case(&g, AttnShape { b, t, c, nh }, 40 + i as u64);
    }
}

fn attention_case(g: &Gpu, d: AttnShape, seed: u64) {
    let (t, hd, bh) = (d.t, d.c / d.nh, d.b * d.nh);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut r = Rng(seed);
    let qkv = r.vec(3 * d.numel(), 1.5);
    let ad = attention::AttnDims {
        b: d.b,
        t,
        c: d.c,
        nh: d.nh,
    };
    let (mut out, mut att) = (vec![0.0; d.numel()], vec![0.0; bh * t * t]);
    attention::forward(
        &mut out,
        &mut att,
        &qkv,
        ad,
        &ferrotron::backend::cpu::matmul::Gemm::builtin(1),
    );

    let qkv_d = g.up(&qkv);
    let zeros = vec![0.0f32; d.numel()];
    let (mut q_d, mut k_d, mut v_d) = (g.up(&zeros), g.up(&zeros), g.up(&zeros));
    g.k.attn_split_qkv(
        &mut q_d.as_view_mut(),
        &mut k_d.as_view_mut(),
        &mut v_d.as_view_mut(),
        &qkv_d.as_view(),
        d,
    )
    .unwrap();
    let (q, k, v) = (g.down(&q_d), g.down(&k_d), g.down(&v_d));
    // Spot-check the layout: q[b, h, t, d] = qkv[b, t, h*hd + d] (+C for k, +2C for v).
    for (bi, h, ti, di) in [
        (0, 0, 0, 0),
        (d.b - 1, d.nh - 1, t - 1, hd - 1),
        (0, 1, 5, 7),
    ] {
        let dst = ((bi * d.nh + h) * t + ti) * hd + di;
        let src = (bi * t + ti) * 3 * d.c + h * hd + di;
        assert_eq!(
            [q[dst], k[dst], v[dst]],
            [qkv[src], qkv[src + d.c], qkv[src + 2 * d.c]]
        );
    }
    let s = bmm(&q, &k, bh, t, hd, t, false, true);
    let mut p_d = g.up(&s);
    g.k.causal_softmax_forward(&mut p_d.as_view_mut(), bh, t, scale)
        .unwrap();
    let p = g.down(&p_d);
    check("causal softmax", &p, &att, 1e-5);
    let y = bmm(&p, &v, bh, t, t, hd, false, false);
    let y_d = g.up(&y);
    let mut out_d = g.up(&zeros);
    g.k.attn_merge_heads(&mut out_d.as_view_mut(), &y_d.as_view(), d)
        .unwrap();
    check("attention out", &g.down(&out_d), &out, 1e-5);

    // Backward.
    let dout = r.vec(d.numel(), 1.0);
    let mut dqkv = vec![0.0; 3 * d.numel()];
    attention::backward(
        &mut dqkv,
        &dout,
        &qkv,
        &att,
        ad,
        &ferrotron::backend::cpu::matmul::Gemm::builtin(1),
    );
    let dout_d = g.up(&dout);
    let mut dy_d = g.up(&zeros);
    g.k.attn_split_heads(&mut dy_d.as_view_mut(), &dout_d.as_view(), d)
        .unwrap();
    let dy = g.down(&dy_d);
    let dv = bmm(&p, &dy, bh, t, t, hd, true, false);
    let dp = bmm(&dy, &v, bh, t, hd, t, false, true);
    let mut ds_d = g.up(&dp);
    g.k.causal_softmax_backward(&mut ds_d.as_view_mut(), &p_d.as_view(), bh, t, scale)
        .unwrap();
    let ds = g.down(&ds_d);
    let dq = bmm(&ds, &k, bh, t, t, hd, false, false);
    let dk = bmm(&ds, &q, bh, t, t, hd, true, false);
    let (dq_d, dk_d, dv_d) = (g.up(&dq), g.up(&dk), g.up(&dv));
    let mut dqkv_d = g.up(&vec![0.0f32; 3 * d.numel()]);
    g.k.attn_merge_dqkv(
        &mut dqkv_d.as_view_mut(),
        &dq_d.as_view(),
        &dk_d.as_view(),
        &dv_d.as_view(),
        d,
    )
    .unwrap();
    check("attention dqkv", &g.down(&dqkv_d), &dqkv, 1e-4);
}

/// Flash attention (fp32) against the materialised CPU attention: output within 1e-5 and dqkv
/// within 1e-4 relative (as the materialised backward), lse against the flash CPU twin. Head
/// sizes 8 (one thread per row), 64 (four) and 128 (eight); T not a multiple of the 64-row
/// blocks or 32-row tiles.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn flash_attention_matches_cpu() {
    let Some(g) = gpu() else { return };
    let shapes = [
        (2, 100, 128, 2),
        (1, 70, 24, 3),
        (1, 65, 256, 2),
        (1, 1, 64, 1),
    ];
    flash_case(&g, false, &shapes, [1e-5, 1e-5, 1e-4]);
}

/// The tensor-core flash attention (bf16 WMMA, fp32 accumulation) against the same fp32
/// references within bf16 tolerances (as `tests/kernel_emu.rs`, which runs these kernels on the
/// CPU): head sizes 16, 48 and 64, odd T, and GPT-2 124M's shape (T = 1024, 12 heads of 64).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn flash_attention_tc_matches_cpu() {
    let Some(g) = gpu() else { return };
    if !g.k.has("flash_tc_forward") {
        assert!(
            std::env::var("FERROTRON_REQUIRE_GPU").as_deref() != Ok("1"),
            "no bf16 MMA on this GPU (before sm_80) and FERROTRON_REQUIRE_GPU=1"
        );
        eprintln!("no bf16 MMA on this GPU (before sm_80): not checked");
        return;
    }
    let shapes = [
        (2, 100, 128, 2),
        (1, 70, 48, 3),
        (1, 1, 64, 1),
        (2, 1024, 768, 12),
    ];
    flash_case(&g, true, &shapes, [1e-2, 1e-2, 2e-2]);
}

fn flash_case(g: &Gpu, tc: bool, shapes: &[(usize, usize, usize, usize)], tol: [f64; 3]) {
    for (i, &(b, t, c, nh)) in shapes.iter().enumerate() {
        let ad = attention::AttnDims { b, t, c, nh };
        let mut r = Rng(80 + i as u64);
        let qkv = r.vec(3 * b * t * c, 1.5);
        let dout = r.vec(b * t * c, 1.0);
        let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
        attention::forward(
            &mut out,
            &mut att,
            &qkv,
            ad,
            &ferrotron::backend::cpu::matmul::Gemm::builtin(1),
        );
        let mut dqkv = vec![0.0; 3 * b * t * c];
        attention::backward(
            &mut dqkv,
            &dout,
            &qkv,
            &att,
            ad,
            &ferrotron::backend::cpu::matmul::Gemm::builtin(1),
        );
        let (mut y_twin, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
        ferrotron::backend::cpu::kernels::flash::forward(&mut y_twin, &mut lse, &qkv, ad);

        let s = AttnShape { b, t, c, nh };
        let qkv_d = g.up(&qkv);
        let mut out_d = g.up(&vec![0.0; b * t * c]);
        let mut lse_d = g.up(&vec![0.0; b * nh * t]);
        g.k.flash_forward(&mut out_d, &mut lse_d, &qkv_d, s, tc)
            .unwrap();
        let name = format!("flash{} b{b} t{t} c{c} nh{nh}", if tc { " tc" } else { "" });
        check(&format!("{name} out"), &g.down(&out_d), &out, tol[0]);
        check(&format!("{name} lse"), &g.down(&lse_d), &lse, tol[1]);
        let mut dqkv_d = g.up(&vec![f32::NAN; 3 * b * t * c]);
        let mut dd = g.up(&vec![0.0; b * nh * t]);
        let dout_d = g.up(&dout);
        g.k.flash_backward(&mut dqkv_d, &mut dd, &dout_d, &out_d, &qkv_d, &lse_d, s, tc)
            .unwrap();
        check(&format!("{name} dqkv"), &g.down(&dqkv_d), &dqkv, tol[2]);
    }
}

/// The LM head on a row range, as the chunked head runs it (`train.head_chunk_rows`): logits of
/// rows 3..10 of `xf [17, C]` into a longer buffer, the loss and gradient of those 7 rows, and
/// the backward into the same rows of `dxf` and into `dwte` — the CUDA backend (fp32 GEMMs)
/// against the CPU backend through the `Backend` trait; what lies outside the rows stays as it
/// was on both.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn lm_head_row_range_matches_cpu() {
    use ferrotron::backend::prelude::*;
    use ferrotron::backend::{cpu::Cpu, Region};
    if gpu().is_none() {
        return;
    }
    let be = cuda::CudaBackend::new(0).unwrap();
    let cpu = Cpu::new(1);
    let (rows, c, v, vp, row0, n) = (17, 32, 100, 128, 3, 7);
    let mut r = Rng(91);
    let xf = r.vec(rows * c, 1.0);
    let p = r.vec(8 + vp * c, 0.5);
    let wte = Region {
        off: 8,
        len: vp * c,
    };
    let tgt: Vec<u32> = (0..n).map(|i| ((i * 13 + 5) % v) as u32).collect();
    let (xf_d, p_d) = (be.upload(&xf).unwrap(), be.upload(&p).unwrap());

    let fill = vec![7.0f32; (n + 2) * vp];
    let mut lc = cpu.upload(&fill).unwrap();
    let (xf_c, p_c) = (cpu.upload(&xf).unwrap(), cpu.upload(&p).unwrap());
    cpu.logits_forward(&mut lc, &xf_c, row0, &p_c, wte, n, c, vp)
        .unwrap();
    let mut lg = be.upload(&fill).unwrap();
    be.logits_forward(&mut lg, &xf_d, row0, &p_d, wte, n, c, vp)
        .unwrap();
    check(
        "head logits (rows 3..10)",
        &be.download(&lg).unwrap(),
        &lc,
        1e-5,
    );

    let mut loss_c = cpu.upload(&[-1.0f32; 10][..n + 3]).unwrap();
    let tc = cpu.tokens(&tgt).unwrap();
    cpu.softmax_xent(&mut lc, &mut loss_c, &tc, n, vp, v, Some(0.5))
        .unwrap();
    let mut loss_g = be.upload(&[-1.0f32; 10]).unwrap();
    let tg = be.tokens(&tgt).unwrap();
    be.softmax_xent(&mut lg, &mut loss_g, &tg, n, vp, v, Some(0.5))
        .unwrap();
    check(
        "head row losses",
        &be.download(&loss_g).unwrap(),
        &loss_c,
        1e-5,
    );
    check("head dlogits", &be.download(&lg).unwrap(), &lc, 1e-5);

    let (dxf0, g0) = (r.vec(rows * c, 1.0), r.vec(p.len(), 0.1));
    let (mut dxf_c, mut g_c) = (cpu.upload(&dxf0).unwrap(), cpu.upload(&g0).unwrap());
    cpu.logits_backward(
        &mut dxf_c, row0, &mut g_c, wte, &lc, &xf_c, &p_c, wte, n, c, vp,
    )
    .unwrap();
    let (mut dxf_g, mut g_g) = (be.upload(&dxf0).unwrap(), be.upload(&g0).unwrap());
    be.logits_backward(
        &mut dxf_g, row0, &mut g_g, wte, &lg, &xf_d, &p_d, wte, n, c, vp,
    )
    .unwrap();
    check(
        "head dxf (rows 3..10)",
        &be.download(&dxf_g).unwrap(),
        &dxf_c,
        1e-5,
    );
    check("head dwte", &be.download(&g_g).unwrap(), &g_c, 1e-5);
}

/// The vocab-parallel ops of the CUDA backend (device kernels) against the CPU backend's
/// (the twins), through the `Backend` trait: a shard of rows 64..128 of a 150-word vocabulary
/// (so some tokens and targets fall outside it and the last columns are padding).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn vocab_parallel_ops_match_cpu() {
    use ferrotron::backend::prelude::*;
    use ferrotron::backend::{cpu::Cpu, Region};
    if gpu().is_none() {
        return;
    }
    let be = cuda::CudaBackend::new(0).unwrap();
    let cpu = Cpu::new(1);
    let (n, t, c, vl, v0, v) = (40, 8, 16, 64, 64, 150);
    let mut r = Rng(90);
    let tok: Vec<u32> = (0..n).map(|i| ((i * 37) % v) as u32).collect();
    // Parameters: wte shard [vl, C] at 0, wpe [T, C] after it.
    let p = r.vec(vl * c + t * c, 1.0);
    let (wte, wpe) = (
        Region {
            off: 0,
            len: vl * c,
        },
        Region {
            off: vl * c,
            len: t * c,
        },
    );
    for wpe in [Some(wpe), None] {
        let mut want = cpu.zeros(n * c).unwrap();
        cpu.embedding_forward_shard(
            &mut want,
            &tok,
            &cpu.upload(&p).unwrap(),
            wte,
            wpe,
            t,
            c,
            v0,
        )
        .unwrap();
        let mut got = be.zeros(n * c).unwrap();
        be.embedding_forward_shard(&mut got, &tok, &be.upload(&p).unwrap(), wte, wpe, t, c, v0)
            .unwrap();
        check(
            "vp embedding forward",
            &be.download(&got).unwrap(),
            &want,
            1e-6,
        );
    }
    let dx = r.vec(n * c, 1.0);
    let g0 = r.vec(vl * c + t * c, 0.1);
    let mut want = cpu.upload(&g0).unwrap();
    cpu.embedding_backward_shard(
        &mut want,
        wte,
        wpe,
        &cpu.upload(&dx).unwrap(),
        &tok,
        t,
        c,
        v0,
    )
    .unwrap();
    let mut got = be.upload(&g0).unwrap();
    be.embedding_backward_shard(&mut got, wte, wpe, &be.upload(&dx).unwrap(), &tok, t, c, v0)
        .unwrap();
    check(
        "vp embedding backward",
        &be.download(&got).unwrap(),
        &want,
        1e-6,
    );

    let z = r.vec(n * vl, 4.0);
    let mut st = cpu.zeros(3 * n).unwrap();
    cpu.xent_partial(&cpu.upload(&z).unwrap(), &mut st, &tok, vl, v0, v)
        .unwrap();
    let mut st_d = be.zeros(3 * n).unwrap();
    be.xent_partial(&be.upload(&z).unwrap(), &mut st_d, &tok, vl, v0, v)
        .unwrap();
    check("vp xent partial", &be.download(&st_d).unwrap(), &st, 1e-5);
    let ms: Vec<f32> = (0..n)
        .flat_map(|i| [st[3 * i], 1.0 / (st[3 * i + 1] + 1.0)])
        .collect();
    let mut zc = cpu.upload(&z).unwrap();
    cpu.xent_grad(&mut zc, &cpu.upload(&ms).unwrap(), &tok, vl, v0, v, 0.25)
        .unwrap();
    let mut z_d = be.upload(&z).unwrap();
    be.xent_grad(&mut z_d, &be.upload(&ms).unwrap(), &tok, vl, v0, v, 0.25)
        .unwrap();
    check("vp xent grad", &be.download(&z_d).unwrap(), &zc, 1e-5);
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn cross_entropy_matches_cpu() {
    let Some(g) = gpu() else { return };
    for (n, v, vp) in [(7, 1000, 1024), (4, 50257, 50304)] {
        xent_case(&g, n, v, vp);
    }
}

fn xent_case(g: &Gpu, n: usize, v: usize, vp: usize) {
    let mut r = Rng(5 + v as u64);
    let logits = r.vec(n * vp, 4.0);
    let targets: Vec<u32> = (0..n).map(|_| r.below(v as u32)).collect();
    let tgt: Vec<i32> = targets.iter().map(|&x| x as i32).collect();
    let tgt_d = g.up(&tgt);
    for grad in [None, Some(1.0 / n as f32)] {
        let (mut z, mut losses) = (logits.clone(), vec![0.0; n]);
        loss::softmax_xent(&mut z, &mut losses, &targets, vp, v, grad);
        let (mut z_d, mut l_d) = (g.up(&logits), g.up(&vec![0.0f32; n]));
        g.k.softmax_xent(
            &mut z_d.as_view_mut(),
            &mut l_d.as_view_mut(),
            &tgt_d.as_view(),
            n,
            vp,
            v,
            grad,
        )
        .unwrap();
        check(
            &format!("xent losses {grad:?}"),
            &g.down(&l_d),
            &losses,
            1e-5,
        );
        check(&format!("xent logits {grad:?}"), &g.down(&z_d), &z, 1e-5);
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn adamw_matches_cpu() {
    let Some(g) = gpu() else { return };
    let layout = ParamLayout::new(&Gpt2Config::new(60, 8, 16, 1, 2));
    let n = layout.total;
    let cfg = adamw::AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut r = Rng(6);
    let mut p = r.vec(n, 1.0);
    let mut p_d = g.up(&p);
    let cpu = ferrotron::backend::cpu::Cpu::new(1);
    let mut opt = adamw::AdamW::new(&cpu, cfg, &layout).unwrap();
    let (mut m_d, mut v_d) = (g.up(&vec![0.0f32; n]), g.up(&vec![0.0f32; n]));
    for step in 1..=3u64 {
        let grads = r.vec(n, 0.1);
        let lr = 1e-3 * step as f32;
        use ferrotron::backend::prelude::*;
        let mut pb = cpu.upload(&p).unwrap();
        opt.step(&cpu, &mut pb, &cpu.upload(&grads).unwrap(), lr)
            .unwrap();
        p = pb.to_vec();
        let g_d = g.up(&grads);
        for e in &layout.entries {
            let range = e.offset..e.offset + e.len;
            let h = ferrotron::backend::AdamStep::new(&cfg, lr, step, e.decay);
            g.k.adamw(
                &mut p_d.slice_mut(range.clone()),
                &g_d.slice(range.clone()),
                &mut m_d.slice_mut(range.clone()),
                &mut v_d.slice_mut(range),
                h,
            )
            .unwrap();
        }
    }
    check("adamw p", &g.down(&p_d), &p, 1e-6);
    check("adamw m", &g.down(&m_d), &opt.m, 1e-6);
    check("adamw v", &g.down(&v_d), &opt.v, 1e-6);
}

/// The multi-tensor kernel (one launch, chunks of at most ADAM_CHUNK elements, wte spans
/// several) against the CPU AdamW, decay flags per tensor included.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn adamw_multi_matches_cpu() {
    let Some(g) = gpu() else { return };
    let layout = ParamLayout::new(&Gpt2Config::new(3000, 16, 32, 2, 2));
    let n = layout.total;
    assert!(layout
        .entries
        .iter()
        .any(|e| e.len > ferrotron::backend::cuda::chunks::ADAM_CHUNK));
    let cfg = adamw::AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut r = Rng(16);
    let mut p = r.vec(n, 1.0);
    let mut p_d = g.up(&p);
    let cpu = ferrotron::backend::cpu::Cpu::new(1);
    let mut opt = adamw::AdamW::new(&cpu, cfg, &layout).unwrap();
    let ranges = adamw::shard_ranges(&layout.entries, 0, n);
    let (mut m_d, mut v_d) = (g.up(&vec![0.0f32; n]), g.up(&vec![0.0f32; n]));
    for step in 1..=3u64 {
        let grads = r.vec(n, 0.1);
        let lr = 1e-3 * step as f32;
        use ferrotron::backend::prelude::*;
        let mut pb = cpu.upload(&p).unwrap();
        opt.step(&cpu, &mut pb, &cpu.upload(&grads).unwrap(), lr)
            .unwrap();
        p = pb.to_vec();
        let g_d = g.up(&grads);
        let h = ferrotron::backend::AdamStep::new(&cfg, lr, step, true);
        g.k.adamw_multi(&mut p_d, &g_d, &mut m_d, &mut v_d, &ranges, h)
            .unwrap();
    }
    check("adamw_multi p", &g.down(&p_d), &p, 1e-6);
    check("adamw_multi m", &g.down(&m_d), &opt.m, 1e-6);
    check("adamw_multi v", &g.down(&v_d), &opt.v, 1e-6);
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn reductions_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(7);
    let x = r.vec(300_001, 1.0);
    let x_d = g.up(&x);
    let (mut out_d, mut parts_d) = (g.up(&[0.0f64]), g.up(&vec![0.0f64; SUMSQ_PARTS]));
    g.k.sum_squares(
        &mut out_d.as_view_mut(),
        &mut parts_d.as_view_mut(),
        &x_d.as_view(),
    )
    .unwrap();
    let (got, want) = (g.down(&out_d)[0], clip::sum_squares(&x));
    eprintln!("sum_squares: {got} vs {want}");
    assert!(
        ((got - want) / want).abs() < 1e-12,
        "sum_squares {got} vs {want}"
    );

    let mut y = x.clone();
    clip::scale(&mut y, 0.37);
    let mut y_d = g.up(&x);
    g.k.scale(&mut y_d.as_view_mut(), 0.37).unwrap();
    check("scale", &g.down(&y_d), &y, 0.0);

    let a = r.vec(x.len(), 1.0);
    let mut a_d = g.up(&a);
    g.k.add_inplace(&mut a_d.as_view_mut(), &x_d.as_view())
        .unwrap();
    let want: Vec<f32> = a.iter().zip(&x).map(|(a, b)| a + b).collect();
    check("add_inplace", &g.down(&a_d), &want, 0.0);

    let (n, oc) = (200, 70);
    let dy = r.vec(n * oc, 1.0);
    let mut db = r.vec(oc, 1.0);
    let mut db_d = g.up(&db);
    ferrotron::backend::cpu::matmul::add_column_sums(&mut db, &dy, n, oc);
    let dy_d = g.up(&dy);
    let mut scratch = g.up(&vec![0.0f32; Kernels::bias_scratch_len(n, oc)]);
    g.k.bias_grad(
        &mut db_d.as_view_mut(),
        &mut scratch.as_view_mut(),
        &dy_d.as_view(),
        n,
        oc,
    )
    .unwrap();
    check("bias grad", &g.down(&db_d), &db, 1e-6);
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn casts_round_to_nearest_even() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(8);
    let mut x: Vec<f32> = r.vec(100_000, 3.0);
    // Exact ties (low 16 bits = 0x8000), both parities, plus extremes and subnormals.
    x.extend([
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0xbf80_8000),
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        -0.0,
        65504.0,
        1e30,
    ]);
    let x_d = g.up(&x);
    let mut h_d = g.up(&vec![half::bf16::ZERO; x.len()]);
    g.k.f32_to_bf16(&mut h_d.as_view_mut(), &x_d.as_view())
        .unwrap();
    let h = g.down(&h_d);
    for (i, (&got, &xi)) in h.iter().zip(&x).enumerate() {
        let want = half::bf16::from_f32(xi);
        assert_eq!(got.to_bits(), want.to_bits(), "f32_to_bf16 at {i}: {xi:e}");
    }
    let mut back_d = g.up(&vec![0.0f32; x.len()]);
    g.k.bf16_to_f32(&mut back_d.as_view_mut(), &h_d.as_view())
        .unwrap();
    let back = g.down(&back_d);
    for (i, (&got, &hi)) in back.iter().zip(&h).enumerate() {
        assert_eq!(got.to_bits(), hi.to_f32().to_bits(), "bf16_to_f32 at {i}");
    }
}

/// Generation's cached attention (`kernels/decode.cu` through `Ops::attention_cached`) against
/// the CPU backend over a sequence's life: a prefill at row 2, a decode step, a chunk taking
/// the positions past 128, another step; the cache equal exactly, the output within 1e-5.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-session.sh runs it (--include-ignored)"]
fn cached_attention_matches_cpu() {
    use ferrotron::backend::cpu::decode::CachedDims;
    use ferrotron::backend::cpu::Cpu;
    use ferrotron::backend::prelude::*;
    if gpu().is_none() {
        return;
    }
    let be = cuda::CudaBackend::new(0).unwrap();
    let cpu = Cpu::new(1);
    let mut r = Rng(17);
    for (c, nh) in [(48usize, 3usize), (768, 12)] {
        let cap = 160;
        let mut kv_g = be.zeros(2 * cap * c).unwrap();
        let mut kv_c = cpu.zeros(2 * cap * c).unwrap();
        for (row0, rows, start) in [(2, 37, 0), (0, 1, 37), (1, 100, 38), (0, 1, 138)] {
            let qkv = r.vec((row0 + rows) * 3 * c, 1.0);
            let d = CachedDims {
                row0,
                rows,
                start,
                cap,
                c,
                nh,
            };
            let mut out_g = be.zeros((row0 + rows) * c).unwrap();
            let mut out_c = cpu.zeros((row0 + rows) * c).unwrap();
            be.attention_cached(&mut out_g, &be.upload(&qkv).unwrap(), &mut kv_g, d)
                .unwrap();
            cpu.attention_cached(&mut out_c, &cpu.upload(&qkv).unwrap(), &mut kv_c, d)
                .unwrap();
            let name = format!("cached attention C {c} rows {rows} at {start}");
            check(
                &name,
                &be.download(&out_g).unwrap(),
                &cpu.download(&out_c).unwrap(),
                1e-5,
            );
            check(
                &name,
                &be.download(&kv_g).unwrap(),
                &cpu.download(&kv_c).unwrap(),
                0.0,
            );
        }
    }
}
