//! Vocab-parallel embedding and cross-entropy (Megatron's `VocabParallelEmbedding` and
//! `vocab_parallel_cross_entropy`): TP rank r holds rows `v0 .. v0 + Vl` of the padded token
//! embedding (`wte_r [Vl, C]`) and computes only its `[N, Vl]` block of the logits. The full
//! logits are never gathered; only three floats per row cross the TP group.
//!
//! Embedding: `out_r[i] = [v0 ≤ tok_i < v0+Vl] · wte_r[tok_i − v0] (+ wpe[i mod T] on one rank)`;
//! the TP all-reduce of `out_r` is the full lookup (its backward dual is the identity).
//!
//! Cross-entropy over the real vocabulary (global columns `< V`), for row i with target y:
//!   partial on rank r:  m_r = max_j z_rj,  s_r = Σ_j exp(z_rj − m_r),  t_r = z_r[y − v0] or 0
//!   combined (after an all-gather of (m, s, t)):  M = max_r m_r,  S = Σ_r s_r·exp(m_r − M),
//!   loss_i = M + ln S − Σ_r t_r
//!   gradient of `scale · Σ_i loss_i`:  dz_rj = scale · (exp(z_rj − M)/S − [j = y − v0]),
//!   0 on padded columns.

use crate::backend::cpu::math;
use rayon::prelude::*;

/// Embedding forward of one vocabulary shard; `wte` is `[Vl, C]` holding global rows
/// `v0 .. v0 + Vl`. Writes `out [N, C]`.
pub fn embedding_forward(
    out: &mut [f32],
    tok: &[u32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    t_len: usize,
    c: usize,
    v0: usize,
) {
    let rows = wte.len() / c;
    out.par_chunks_mut(c)
        .zip(tok.par_iter())
        .enumerate()
        .for_each(|(i, (o, &id))| {
            let id = id as usize;
            if id >= v0 && id < v0 + rows {
                o.copy_from_slice(&wte[(id - v0) * c..(id - v0) * c + c]);
            } else {
                o.fill(0.0);
            }
            if let Some(wpe) = wpe {
                let t = i % t_len;
                for (o, &p) in o.iter_mut().zip(&wpe[t * c..t * c + c]) {
                    *o += p;
                }
            }
        });
}

/// Per-row partial statistics `stats [N, 3] = (m_r, s_r, t_r)` of local logits `[N, Vl]` whose
/// column j is global column `v0 + j`; columns `≥ v` (padding) are ignored.
pub fn xent_partial(
    logits: &[f32],
    stats: &mut [f32],
    targets: &[u32],
    vl: usize,
    v0: usize,
    v: usize,
) {
    let valid = v.saturating_sub(v0).min(vl);
    logits
        .par_chunks(vl)
        .zip(stats.par_chunks_mut(3))
        .zip(targets.par_iter())
        .for_each(|((z, st), &y)| {
            let z = &z[..valid];
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let mut acc = [0.0f32; 16];
            for ch in z.chunks(16) {
                for (a, &x) in acc.iter_mut().zip(ch) {
                    *a += math::exp(x - m);
                }
            }
            let s = acc.iter().map(|&a| a as f64).sum::<f64>();
            let y = y as usize;
            let t = if y >= v0 && y < v0 + valid {
                z[y - v0]
            } else {
                0.0
            };
            st.copy_from_slice(&[m, s as f32, t]);
        });
}

/// Combines the all-gathered partials `gathered [TP, N, 3]` into `ms [N, 2] = (M, 1/S)` and
/// `losses [N] = M + ln S − Σ_r t_r`.
pub fn xent_combine(gathered: &[f32], tp: usize, ms: &mut [f32], losses: &mut [f32]) {
    let n = losses.len();
    for i in 0..n {
        let part = |r: usize| &gathered[(r * n + i) * 3..(r * n + i) * 3 + 3];
        let m = (0..tp)
            .map(|r| part(r)[0])
            .fold(f32::NEG_INFINITY, f32::max);
        let (mut s, mut t) = (0.0f64, 0.0f64);
        for r in 0..tp {
            let p = part(r);
            if p[1] > 0.0 {
                s += p[1] as f64 * ((p[0] - m) as f64).exp();
            }
            t += p[2] as f64;
        }
        ms[2 * i] = m;
        ms[2 * i + 1] = (1.0 / s) as f32;
        losses[i] = (m as f64 + s.ln() - t) as f32;
    }
}

/// Overwrites local logits `[N, Vl]` with `scale · (softmax − onehot)` using the combined
/// `ms [N, 2] = (M, 1/S)`; padded columns become 0.
pub fn xent_grad(
    logits: &mut [f32],
    ms: &[f32],
    targets: &[u32],
    vl: usize,
    v0: usize,
    v: usize,
    scale: f32,
) {
    let valid = v.saturating_sub(v0).min(vl);
    logits
        .par_chunks_mut(vl)
        .zip(ms.par_chunks(2))
        .zip(targets.par_iter())
        .for_each(|((z, ms), &y)| {
            let k = scale * ms[1];
            for x in &mut z[..valid] {
                *x = math::exp(*x - ms[0]) * k;
            }
            let y = y as usize;
            if y >= v0 && y < v0 + valid {
                z[y - v0] -= scale;
            }
            z[valid..].fill(0.0);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::loss::softmax_xent;

    /// Sharding the vocabulary over 1, 2 and 3 ranks reproduces the unsharded fused
    /// cross-entropy (losses and logit gradients).
    #[test]
    fn sharded_cross_entropy_matches_the_fused_one() {
        let (n, v) = (5usize, 37usize);
        for tp in [1usize, 2, 3] {
            let vl = v.div_ceil(tp).div_ceil(4) * 4;
            let vp = vl * tp;
            let logits: Vec<f32> = (0..n * vp)
                .map(|i| ((i * 7919 % 101) as f32 / 17.0).sin() * 3.0)
                .collect();
            let targets: Vec<u32> = (0..n).map(|i| (i * 11 % v) as u32).collect();
            let mut full = logits.clone();
            let mut want = vec![0.0f32; n];
            softmax_xent(&mut full, &mut want, &targets, vp, v, Some(0.25));
            let mut gathered = vec![0.0f32; tp * n * 3];
            let mut shards: Vec<Vec<f32>> = (0..tp)
                .map(|r| {
                    (0..n)
                        .flat_map(|i| logits[i * vp + r * vl..i * vp + (r + 1) * vl].to_vec())
                        .collect()
                })
                .collect();
            for (r, z) in shards.iter().enumerate() {
                let st = &mut gathered[r * n * 3..(r + 1) * n * 3];
                xent_partial(z, st, &targets, vl, r * vl, v);
            }
            let (mut ms, mut got) = (vec![0.0f32; 2 * n], vec![0.0f32; n]);
            xent_combine(&gathered, tp, &mut ms, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * b.abs(), "tp={tp}: loss {a} vs {b}");
            }
            for (r, z) in shards.iter_mut().enumerate() {
                xent_grad(z, &ms, &targets, vl, r * vl, v, 0.25);
                for i in 0..n {
                    for j in 0..vl {
                        let (a, b) = (z[i * vl + j], full[i * vp + r * vl + j]);
                        assert!((a - b).abs() <= 1e-6, "tp={tp} grad [{i},{}]", r * vl + j);
                    }
                }
            }
        }
    }
}
