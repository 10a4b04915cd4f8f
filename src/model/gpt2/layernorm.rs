//! LayerNorm over the last dimension: `y = (x − μ) · rstd · w + b`, `rstd = 1/sqrt(σ² + eps)`
//! with the biased variance σ² (PyTorch semantics). Shapes: x, y `[N, C]`; w, b `[C]`;
//! μ, rstd `[N]` are saved for the backward pass.

use super::LN_EPS;
use crate::backend::cpu::matmul::add_column_sums;
use rayon::prelude::*;

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
        .for_each(|((o, (m, r)), xr)| {
            let mu = xr.iter().sum::<f32>() / c as f32;
            let var = xr.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + LN_EPS).sqrt();
            for j in 0..c {
                o[j] = (xr[j] - mu) * rs * w[j] + b[j];
            }
            *m = mu;
            *r = rs;
        });
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
        .for_each(|((dxr, (dyr, xr)), (&mu, &rs))| {
            let mut g_mean = 0.0f32;
            let mut gn_mean = 0.0f32;
            for j in 0..c {
                let nh = (xr[j] - mu) * rs;
                let g = dyr[j] * w[j];
                g_mean += g;
                gn_mean += g * nh;
            }
            g_mean /= c as f32;
            gn_mean /= c as f32;
            for j in 0..c {
                let nh = (xr[j] - mu) * rs;
                let g = dyr[j] * w[j];
                dxr[j] += (g - g_mean - nh * gn_mean) * rs;
            }
        });
    // dw needs dy · n̂ per row; build it in chunks to keep the reduction deterministic.
    let mut dyn_ = vec![0.0f32; n * c];
    dyn_.par_chunks_mut(c)
        .zip(dy.par_chunks(c).zip(x.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((o, (dyr, xr)), (&mu, &rs))| {
            for j in 0..c {
                o[j] = dyr[j] * (xr[j] - mu) * rs;
            }
        });
    add_column_sums(dw, &dyn_, n, c);
    add_column_sums(db, dy, n, c);
}
