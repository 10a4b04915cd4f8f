//! Global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`).

use rayon::prelude::*;

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

/// Clip coefficient for a global norm: `min(1, max_norm / (norm + 1e-6))`; 1 when disabled.
pub fn clip_coef(norm: f64, max_norm: f32) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm as f64 / (norm + 1e-6)).min(1.0) as f32
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
