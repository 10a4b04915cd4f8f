//! LayerNorm over the last dimension: `y = (x − μ) · rstd · w + b`, `rstd = 1/sqrt(σ² + eps)`
//! with the biased variance σ² (PyTorch semantics). Shapes: x, y `[N, C]`; w, b `[C]`;
//! μ, rstd `[N]` are saved for the backward pass.

use crate::backend::cpu::matmul::add_column_sums;
use crate::backend::cpu::simd::{self, multiversion};
use rayon::prelude::*;

/// LayerNorm epsilon of GPT-2.
pub const LN_EPS: f32 = 1e-5;

/// Forward: writes `out [N, C]`, `mean [N]`, `rstd [N]`.
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
) {
    let c = w.len();
    out.par_chunks_mut(c)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .zip(x.par_chunks(c))
        .for_each(|((o, (m, r)), xr)| (*m, *r) = forward_row(o, xr, w, b));
}

multiversion! {
    /// One row: `o = (x − μ)·rstd·w + b`; returns (μ, rstd).
    fn forward_row(o: &mut [f32], xr: &[f32], w: &[f32], b: &[f32]) -> (f32, f32) {
        let c = w.len();
        let mu = simd::sum(xr) / c as f32;
        let var = simd::sum_sq_dev(xr, mu) / c as f32;
        let rs = 1.0 / (var + LN_EPS).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (x - mu) * rs * w + b;
        }
        (mu, rs)
    }
}

/// Backward. With n̂ = (x − μ)·rstd and g = dy·w:
/// `dx += rstd · (g − mean(g) − n̂ · mean(g · n̂))` (accumulated into `dx`, which is the
/// residual stream's gradient), `dw += Σ_rows dy · n̂`, `db += Σ_rows dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    let c = w.len();
    let n = mean.len();
    dx.par_chunks_mut(c)
        .zip(dy.par_chunks(c).zip(x.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dxr, (dyr, xr)), (&mu, &rs))| backward_row(dxr, dyr, xr, w, mu, rs));
    // dw needs dy · n̂ per row; build it in chunks to keep the reduction deterministic.
    let mut dyn_ = vec![0.0f32; n * c];
    dyn_.par_chunks_mut(c)
        .zip(dy.par_chunks(c).zip(x.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((o, (dyr, xr)), (&mu, &rs))| dy_nhat_row(o, dyr, xr, mu, rs));
    add_column_sums(dw, &dyn_, n, c);
    add_column_sums(db, dy, n, c);
}

multiversion! {
    /// One row of the input gradient: `dx += rstd·(g − mean(g) − n̂·mean(g·n̂))`, g = dy·w.
    fn backward_row(dxr: &mut [f32], dyr: &[f32], xr: &[f32], w: &[f32], mu: f32, rs: f32) {
        let c = w.len();
        const L: usize = simd::LANES;
        let (mut g_acc, mut gn_acc) = ([0.0f32; L], [0.0f32; L]);
        let whole = c - c % L;
        for j0 in (0..whole).step_by(L) {
            let (dy, x, w) = (&dyr[j0..j0 + L], &xr[j0..j0 + L], &w[j0..j0 + L]);
            for k in 0..L {
                let g = dy[k] * w[k];
                g_acc[k] += g;
                gn_acc[k] += g * ((x[k] - mu) * rs);
            }
        }
        for j in whole..c {
            let g = dyr[j] * w[j];
            g_acc[j - whole] += g;
            gn_acc[j - whole] += g * ((xr[j] - mu) * rs);
        }
        let g_mean = g_acc.iter().sum::<f32>() / c as f32;
        let gn_mean = gn_acc.iter().sum::<f32>() / c as f32;
        for (((d, &dy), &x), &w) in dxr.iter_mut().zip(dyr).zip(xr).zip(w) {
            let nh = (x - mu) * rs;
            let g = dy * w;
            *d += (g - g_mean - nh * gn_mean) * rs;
        }
    }
}

multiversion! {
    /// `o = dy · n̂` for one row (summed over rows into dw).
    fn dy_nhat_row(o: &mut [f32], dyr: &[f32], xr: &[f32], mu: f32, rs: f32) {
        for ((o, &dy), &x) in o.iter_mut().zip(dyr).zip(xr) {
            *o = dy * (x - mu) * rs;
        }
    }
}
