//! Cross-entropy fused with softmax over the (padded) vocabulary.
//!
//! For each row n of `logits [N, Vp]` and target y_n: `loss_n = logsumexp(z[0..V]) − z[y_n]`,
//! padded columns `V..Vp` excluded. With `grad_scale = Some(s)` the logits are overwritten by
//! `s · (softmax(z) − onehot(y))` on real columns and 0 on padded ones — the gradient of
//! `s · Σ_n loss_n` (s = 1 / tokens in the global batch gives the mean loss).

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
            let max = real.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f64 = real.iter().map(|&x| ((x - max).exp()) as f64).sum();
            let lse = max as f64 + sum.ln();
            *loss = (lse - real[y as usize] as f64) as f32;
            if let Some(s) = grad_scale {
                let inv = (1.0 / sum) as f32;
                for x in real.iter_mut() {
                    *x = (*x - max).exp() * inv * s;
                }
                real[y as usize] -= s;
                z[v..].fill(0.0);
            }
        });
}
