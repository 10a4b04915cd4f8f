//! Flash-style causal attention (FlashAttention-2's algorithm): the CPU twin of the kernels in
//! `kernels/flash_attention.cu`, in the same order of operations, tested against the
//! materialised attention of `attention.rs`.
//!
//! Per (b, h), with q_i, k_j, v_j the rows of head h (hd channels) and scale = 1/sqrt(hd):
//!
//! Forward, one query row at a time, keys j ≤ i in order, online softmax:
//! ```text
//! s = scale·q_i·k_j;  if s > m: (l, acc) *= exp(m − s), m = s;
//! p = exp(s − m);  l += p;  acc += p·v_j
//! ```
//! then y_i = acc / l and lse_i = m + ln l. Only lse `[B, NH, T]` is kept for backward — never
//! the `[T, T]` probabilities.
//!
//! Backward, with P_ij = exp(scale·q_i·k_j − lse_i) recomputed and D_i = dy_i·y_i:
//! ```text
//! dS_ij = P_ij (dy_i·v_j − D_i)
//! dq_i = scale Σ_{j≤i} dS_ij k_j,  dk_j = scale Σ_{i≥j} dS_ij q_i,  dv_j = Σ_{i≥j} P_ij dy_i
//! ```
//! The GPU computes dq per query row and dk, dv per key row, so nothing is accumulated
//! atomically.

use super::attention::AttnDims;
use rayon::prelude::*;

/// Floats of the saved statistics: lse `[B, NH, T]`.
pub fn saved_len(d: AttnDims) -> usize {
    d.b * d.nh * d.t
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Row `i` of head `h` (channels `h·hd ..`) of part `part` (0 q, 1 k, 2 v) of `qkv [B, T, 3C]`
/// for batch element `bi`.
fn row(qkv: &[f32], d: AttnDims, bi: usize, part: usize, h: usize, i: usize) -> &[f32] {
    let hd = d.c / d.nh;
    let o = (bi * d.t + i) * 3 * d.c + part * d.c + h * hd;
    &qkv[o..o + hd]
}

/// Forward: `out [B, T, C]`, `lse [B, NH, T]` from `qkv [B, T, 3C]`.
pub fn forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], d: AttnDims) {
    let (t, c, hd) = (d.t, d.c, d.c / d.nh);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut heads = vec![0.0f32; d.b * d.nh * t * hd];
    heads
        .par_chunks_mut(t * hd)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each(|(bh, (y, lse))| {
            let (bi, h) = (bh / d.nh, bh % d.nh);
            let mut acc = vec![0.0f32; hd];
            for i in 0..t {
                let q = row(qkv, d, bi, 0, h, i);
                let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                acc.fill(0.0);
                for j in 0..=i {
                    let s = scale * dot(q, row(qkv, d, bi, 1, h, j));
                    if s > m {
                        let corr = (m - s).exp();
                        l *= corr;
                        acc.iter_mut().for_each(|a| *a *= corr);
                        m = s;
                    }
                    let p = (s - m).exp();
                    l += p;
                    for (a, v) in acc.iter_mut().zip(row(qkv, d, bi, 2, h, j)) {
                        *a += p * v;
                    }
                }
                for (o, a) in y[i * hd..(i + 1) * hd].iter_mut().zip(&acc) {
                    *o = a / l;
                }
                lse[i] = m + l.ln();
            }
        });
    for (bh, y) in heads.chunks(t * hd).enumerate() {
        let (bi, h) = (bh / d.nh, bh % d.nh);
        for i in 0..t {
            let o = (bi * t + i) * c + h * hd;
            out[o..o + hd].copy_from_slice(&y[i * hd..(i + 1) * hd]);
        }
    }
}

/// Backward: `dqkv [B, T, 3C]` (overwritten) from `dout [B, T, C]`, the forward's `out` and
/// `lse`, and `qkv`.
pub fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    qkv: &[f32],
    lse: &[f32],
    d: AttnDims,
) {
    let (t, c, hd) = (d.t, d.c, d.c / d.nh);
    let scale = 1.0 / (hd as f32).sqrt();
    // Row i of head h of a `[B, T, C]` buffer.
    let y_row = |bi: usize, h: usize, i: usize| -> std::ops::Range<usize> {
        let o = (bi * t + i) * c + h * hd;
        o..o + hd
    };
    // Per head: dQ | dK | dV, each [T, hd].
    let mut dheads = vec![0.0f32; d.b * d.nh * 3 * t * hd];
    dheads
        .par_chunks_mut(3 * t * hd)
        .enumerate()
        .for_each(|(bh, dh)| {
            let (bi, h) = (bh / d.nh, bh % d.nh);
            let lse = &lse[bh * t..(bh + 1) * t];
            let dd: Vec<f32> = (0..t)
                .map(|i| dot(&dout[y_row(bi, h, i)], &out[y_row(bi, h, i)]))
                .collect();
            let (dq, rest) = dh.split_at_mut(t * hd);
            let (dk, dv) = rest.split_at_mut(t * hd);
            let p_ds = |i: usize, j: usize| {
                let q = row(qkv, d, bi, 0, h, i);
                let p = (scale * dot(q, row(qkv, d, bi, 1, h, j)) - lse[i]).exp();
                let dp = dot(&dout[y_row(bi, h, i)], row(qkv, d, bi, 2, h, j));
                (p, p * (dp - dd[i]))
            };
            // dq: per query row, keys j ≤ i.
            for i in 0..t {
                let acc = &mut dq[i * hd..(i + 1) * hd];
                for j in 0..=i {
                    let (_, ds) = p_ds(i, j);
                    for (a, k) in acc.iter_mut().zip(row(qkv, d, bi, 1, h, j)) {
                        *a += ds * k;
                    }
                }
                acc.iter_mut().for_each(|a| *a *= scale);
            }
            // dk, dv: per key row, queries i ≥ j.
            for j in 0..t {
                let (dkj, dvj) = (&mut dk[j * hd..(j + 1) * hd], &mut dv[j * hd..(j + 1) * hd]);
                for i in j..t {
                    let (p, ds) = p_ds(i, j);
                    let q = row(qkv, d, bi, 0, h, i);
                    let dy = &dout[y_row(bi, h, i)];
                    for ((a, b), (x, g)) in dkj.iter_mut().zip(dvj.iter_mut()).zip(q.iter().zip(dy))
                    {
                        *a += ds * x;
                        *b += p * g;
                    }
                }
                dkj.iter_mut().for_each(|a| *a *= scale);
            }
        });
    // [B, NH, 3, T, hd] -> [B, T, 3C]
    for (bh, dh) in dheads.chunks(3 * t * hd).enumerate() {
        let (bi, h) = (bh / d.nh, bh % d.nh);
        for part in 0..3 {
            for i in 0..t {
                let o = (bi * t + i) * 3 * c + part * c + h * hd;
                let s = (part * t + i) * hd;
                dqkv[o..o + hd].copy_from_slice(&dh[s..s + hd]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::attention;
    use crate::backend::cpu::matmul::Gemm;

    fn wave(n: usize, k: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * k) % 101) as f32 / 101.0 - 0.5) * 2.0)
            .collect()
    }

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let n: f32 = b.iter().map(|y| y * y).sum();
        (d / n.max(1e-30)).sqrt()
    }

    /// The flash algorithm gives the materialised attention's output and gradients (1e-5
    /// relative), for several shapes including a single position and hd = 1.
    #[test]
    fn flash_matches_materialised_attention() {
        for (b, t, c, nh) in [(2, 7, 8, 2), (1, 1, 4, 4), (1, 33, 64, 1), (3, 16, 12, 3)] {
            let d = AttnDims { b, t, c, nh };
            let qkv = wave(b * t * 3 * c, 37);
            let dout = wave(b * t * c, 53);
            let (mut y0, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
            attention::forward(&mut y0, &mut att, &qkv, d, &Gemm::builtin(1));
            let mut dq0 = vec![0.0; b * t * 3 * c];
            attention::backward(&mut dq0, &dout, &qkv, &att, d, &Gemm::builtin(1));
            let (mut y1, mut lse) = (vec![0.0; b * t * c], vec![0.0; saved_len(d)]);
            forward(&mut y1, &mut lse, &qkv, d);
            assert!(rel(&y1, &y0) < 1e-5, "{d:?} out: {}", rel(&y1, &y0));
            let mut dq1 = vec![f32::NAN; b * t * 3 * c];
            backward(&mut dq1, &dout, &y1, &qkv, &lse, d);
            assert!(rel(&dq1, &dq0) < 1e-5, "{d:?} dqkv: {}", rel(&dq1, &dq0));
            // lse really is log Σ_j exp(s_ij): row 0 has one key, s_00.
            let hd = c / nh;
            let s00 = dot(&qkv[..hd], &qkv[c..c + hd]) / (hd as f32).sqrt();
            assert!((lse[0] - s00).abs() < 1e-6);
        }
    }
}
