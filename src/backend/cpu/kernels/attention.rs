//! Causal multi-head self-attention (the part between `c_attn` and `c_proj`).
//!
//! Input `qkv [B, T, 3C]` holds, per position, q (C) | k (C) | v (C), each split into NH heads
//! of hd = C/NH channels (Hugging Face's layout). Per (b, h):
//!   S = Q·Kᵀ / sqrt(hd)          `[T, T]`
//!   P = softmax(S) with s > t masked (causal)   — saved in `att [B, NH, T, T]`
//!   Y = P·V                      `[T, hd]`, written to `out [B, T, C]` at channels h·hd..
//! Heads run in parallel (rayon), each with serial GEMMs; deterministic for any thread count.

use crate::backend::cpu::matmul::{Gemm, Mat};
use crate::backend::cpu::simd;
use rayon::prelude::*;

/// Dimensions of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
}

impl AttnDims {
    /// The heads of one of `tp` tensor-parallel ranks: C/tp wide, NH/tp heads.
    pub fn local(self, tp: usize) -> AttnDims {
        AttnDims {
            c: self.c / tp,
            nh: self.nh / tp,
            ..self
        }
    }
    fn hd(&self) -> usize {
        self.c / self.nh
    }
    /// Views of Q, K, V of head (bi, h) inside `qkv`.
    fn qkv_views<'a>(&self, qkv: &'a [f32], bi: usize, h: usize) -> [Mat<'a>; 3] {
        let (t, c, hd) = (self.t, self.c, self.hd());
        let base = bi * t * 3 * c + h * hd;
        [0, c, 2 * c].map(|o| Mat::strided(&qkv[base + o..], t, hd, 3 * c))
    }
}

/// Forward. Writes `out [B, T, C]` and the probabilities `att [B, NH, T, T]`.
pub fn forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], d: AttnDims, g: &Gemm) {
    let g = &g.serial();
    let (t, c, hd) = (d.t, d.c, d.hd());
    let scale = 1.0 / (hd as f32).sqrt();
    let mut y_heads = vec![0.0f32; d.b * d.nh * t * hd];
    att.par_chunks_mut(t * t)
        .zip(y_heads.par_chunks_mut(t * hd))
        .enumerate()
        .for_each(|(bh, (p, y))| {
            let (bi, h) = (bh / d.nh, bh % d.nh);
            let [q, k, v] = d.qkv_views(qkv, bi, h);
            g.matmul(p, t, q, k.t(), false);
            for row in 0..t {
                causal_softmax_row(&mut p[row * t..row * t + t], row, scale);
            }
            g.matmul(y, hd, Mat::new(p, t, t), v, false);
        });
    // [B, NH, T, hd] -> [B, T, C]
    out.par_chunks_mut(t * c).enumerate().for_each(|(bi, ob)| {
        for h in 0..d.nh {
            let yh = &y_heads[(bi * d.nh + h) * t * hd..][..t * hd];
            for row in 0..t {
                ob[row * c + h * hd..row * c + h * hd + hd]
                    .copy_from_slice(&yh[row * hd..row * hd + hd]);
            }
        }
    });
}

crate::backend::cpu::simd::multiversion! {
    /// In place: `p[s] = softmax(scale · p[0..=t])[s]` for s ≤ t, 0 for s > t.
    fn causal_softmax_row(p: &mut [f32], t: usize, scale: f32) {
        // max(scale·p) = scale·max(p) for scale > 0.
        let max = simd::max(&p[..=t]) * scale;
        let mut acc = [0.0f32; simd::LANES];
        for ch in p[..=t].chunks_mut(simd::LANES) {
            for (a, v) in acc.iter_mut().zip(ch.iter_mut()) {
                *v = crate::backend::cpu::math::exp(*v * scale - max);
                *a += *v;
            }
        }
        let inv = 1.0 / acc.iter().sum::<f32>();
        for v in &mut p[..=t] {
            *v *= inv;
        }
        p[t + 1..].fill(0.0);
    }
}

crate::backend::cpu::simd::multiversion! {
    /// One row of the softmax backward, in place: `ds[s] = p[s]·(ds[s] − Σ p·ds)·scale` for
    /// s ≤ t, 0 beyond.
    fn softmax_backward_row(dr: &mut [f32], pr: &[f32], t: usize, scale: f32) {
        let dot = simd::dot(&pr[..=t], &dr[..=t]);
        for (d, &p) in dr[..=t].iter_mut().zip(&pr[..=t]) {
            *d = p * (*d - dot) * scale;
        }
        dr[t + 1..].fill(0.0);
    }
}

/// Backward. Given `dout [B, T, C]`, writes `dqkv [B, T, 3C]` (overwritten):
///   dV = Pᵀ·dY,  dP = dY·Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)) / sqrt(hd),
///   dQ = dS·K,   dK = dSᵀ·Q.
pub fn backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], d: AttnDims, g: &Gemm) {
    let g = &g.serial();
    let (t, c, hd) = (d.t, d.c, d.hd());
    let scale = 1.0 / (hd as f32).sqrt();
    // Per head: dQ | dK | dV, each [T, hd].
    let mut dheads = vec![0.0f32; d.b * d.nh * 3 * t * hd];
    dheads
        .par_chunks_mut(3 * t * hd)
        .zip(att.par_chunks(t * t))
        .enumerate()
        .for_each(|(bh, (dh, p))| {
            let (bi, h) = (bh / d.nh, bh % d.nh);
            let [q, k, v] = d.qkv_views(qkv, bi, h);
            let dy = Mat::strided(&dout[bi * t * c + h * hd..], t, hd, c);
            let pm = Mat::new(p, t, t);
            let (dq, rest) = dh.split_at_mut(t * hd);
            let (dk, dv) = rest.split_at_mut(t * hd);
            g.matmul(dv, hd, pm.t(), dy, false);
            let mut ds = vec![0.0f32; t * t];
            g.matmul(&mut ds, t, dy, v.t(), false);
            for row in 0..t {
                let pr = &p[row * t..row * t + t];
                softmax_backward_row(&mut ds[row * t..row * t + t], pr, row, scale);
            }
            let dsm = Mat::new(&ds, t, t);
            g.matmul(dq, hd, dsm, k, false);
            g.matmul(dk, hd, dsm.t(), q, false);
        });
    // [B, NH, 3, T, hd] -> [B, T, 3C]
    dqkv.par_chunks_mut(t * 3 * c)
        .enumerate()
        .for_each(|(bi, ob)| {
            for h in 0..d.nh {
                let base = (bi * d.nh + h) * 3 * t * hd;
                for (part, off) in [0, c, 2 * c].into_iter().enumerate() {
                    let src = &dheads[base + part * t * hd..][..t * hd];
                    for row in 0..t {
                        let dst = row * 3 * c + off + h * hd;
                        ob[dst..dst + hd].copy_from_slice(&src[row * hd..row * hd + hd]);
                    }
                }
            }
        });
}
