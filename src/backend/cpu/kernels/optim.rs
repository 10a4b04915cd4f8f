//! The CPU twins of the optimizer's kernels: AdamW's update, and the gradient norm's sum of
//! squares and clipping's scale (`optim` uses them through the backend).

use crate::backend::AdamStep;
use rayon::prelude::*;

/// The CPU twin of one AdamW update over matching slices.
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
    const CH: usize = 1 << 14;
    p.par_chunks_mut(CH)
        .zip(g.par_chunks(CH))
        .zip(m.par_chunks_mut(CH).zip(v.par_chunks_mut(CH)))
        .for_each(|((p, g), (m, v))| update_chunk(p, g, m, v, s));
}

crate::backend::cpu::simd::multiversion! {
    fn update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            p[i] *= s.decay_factor;
            m[i] += (g[i] - m[i]) * (1.0 - s.beta1);
            v[i] = v[i] * s.beta2 + (1.0 - s.beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / s.bc2_sqrt + s.eps;
            p[i] -= s.step_size * m[i] / denom;
        }
    }
}

/// Sum of squares of `g`, accumulated in f64 in fixed-size chunks combined in order
/// (independent of the thread count).
pub fn sum_squares(g: &[f32]) -> f64 {
    let parts: Vec<f64> = g.par_chunks(1 << 16).map(chunk_sum_squares).collect();
    parts.iter().sum()
}

crate::backend::cpu::simd::multiversion! {
    fn chunk_sum_squares(c: &[f32]) -> f64 {
        crate::backend::cpu::simd::sum_squares_f64(c)
    }
}

/// `g *= coef`.
pub fn scale(g: &mut [f32], coef: f32) {
    if coef != 1.0 {
        g.par_chunks_mut(1 << 16).for_each(|c| scale_chunk(c, coef));
    }
}

crate::backend::cpu::simd::multiversion! {
    fn scale_chunk(c: &mut [f32], coef: f32) {
        c.iter_mut().for_each(|x| *x *= coef);
    }
}
