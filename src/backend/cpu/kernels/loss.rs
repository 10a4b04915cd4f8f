//! Cross-entropy fused with softmax over the (padded) vocabulary.
//!
//! For each row n of `logits [N, Vp]` and target y_n: `loss_n = logsumexp(z[0..V]) − z[y_n]`,
//! padded columns `V..Vp` excluded. With `grad_scale = Some(s)` the logits are overwritten by
//! `s · (softmax(z) − onehot(y))` on real columns and 0 on padded ones — the gradient of
//! `s · Σ_n loss_n` (s = 1 / tokens in the global batch gives the mean loss).

use crate::backend::cpu::math;
use crate::backend::cpu::simd::{self, multiversion};
use rayon::prelude::*;

/// Computes `losses [N]`; optionally turns `logits` into their gradient in place.
pub fn softmax_xent(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    vp: usize,
    v: usize,
    grad_scale: Option<f32>,
) {
    logits
        .par_chunks_mut(vp)
        .zip(losses.par_iter_mut().zip(targets.par_iter()))
        .for_each(|(z, (loss, &y))| *loss = xent_row(z, y, v, grad_scale));
}

multiversion! {
    /// One row: returns `logsumexp(z[..v]) − z[y]`; with `grad_scale`, z becomes its gradient.
    fn xent_row(z: &mut [f32], y: u32, v: usize, grad_scale: Option<f32>) -> f32 {
        let real = &mut z[..v];
        let target = real[y as usize];
        let max = simd::max(real);
        match grad_scale {
            // Exponentials computed once (summed in the same pass), kept in place, then
            // normalised and scaled.
            Some(s) => {
                let sum = exp_sum(real, max, true);
                let k = (s as f64 / sum) as f32;
                real.iter_mut().for_each(|x| *x *= k);
                real[y as usize] -= s;
                z[v..].fill(0.0);
                (max as f64 + sum.ln() - target as f64) as f32
            }
            None => {
                let sum = exp_sum(real, max, false);
                (max as f64 + sum.ln() - target as f64) as f32
            }
        }
    }
}

/// Σ exp(x − max) in 16 f32 lanes combined in f64; with `store`, x is replaced by the
/// exponentials. One pass over the row.
#[inline(always)]
fn exp_sum(x: &mut [f32], max: f32, store: bool) -> f64 {
    let mut acc = [0.0f32; 16];
    for ch in x.chunks_mut(16) {
        for (a, v) in acc.iter_mut().zip(ch.iter_mut()) {
            let e = math::exp(*v - max);
            if store {
                *v = e;
            }
            *a += e;
        }
    }
    acc.iter().map(|&a| a as f64).sum()
}
