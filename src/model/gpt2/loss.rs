//! Cross-entropy fused with softmax over the (padded) vocabulary.
//!
//! For each row n of `logits [N, Vp]` and target y_n: `loss_n = logsumexp(z[0..V]) − z[y_n]`,
//! padded columns `V..Vp` excluded. With `grad_scale = Some(s)` the logits are overwritten by
//! `s · (softmax(z) − onehot(y))` on real columns and 0 on padded ones — the gradient of
//! `s · Σ_n loss_n` (s = 1 / tokens in the global batch gives the mean loss).

use crate::backend::cpu::math;
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
        .for_each(|(z, (loss, &y))| {
            let real = &mut z[..v];
            let target = real[y as usize];
            let max = real.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            match grad_scale {
                // Exponentials computed once, kept in place, then normalised and scaled.
                Some(s) => {
                    real.iter_mut().for_each(|x| *x = math::exp(*x - max));
                    let sum = sum_f32(real);
                    *loss = (max as f64 + sum.ln() - target as f64) as f32;
                    let k = (s as f64 / sum) as f32;
                    real.iter_mut().for_each(|x| *x *= k);
                    real[y as usize] -= s;
                    z[v..].fill(0.0);
                }
                None => {
                    let mut acc = [0.0f32; 16];
                    for ch in real.chunks(16) {
                        for (a, &x) in acc.iter_mut().zip(ch) {
                            *a += math::exp(x - max);
                        }
                    }
                    let sum = acc.iter().map(|&a| a as f64).sum::<f64>();
                    *loss = (max as f64 + sum.ln() - target as f64) as f32;
                }
            }
        });
}

/// Σ x in 16 f32 lanes (vectorisable), lanes combined in f64.
fn sum_f32(x: &[f32]) -> f64 {
    let mut acc = [0.0f32; 16];
    for ch in x.chunks(16) {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += v;
        }
    }
    acc.iter().map(|&a| a as f64).sum()
}
