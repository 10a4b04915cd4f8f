//! Attention against a KV cache, for generation: the CPU backend's op and the twin of
//! `kernels/decode.cu`.

/// Where a sequence's new rows and its cache are.
#[derive(Debug, Clone, Copy)]
pub struct CachedDims {
    /// First row of the sequence in `out` and `qkv`.
    pub row0: usize,
    /// New positions `start .. start + rows`.
    pub rows: usize,
    pub start: usize,
    /// Positions the cache holds (`kv` is `[2, cap, C]`: keys, then values).
    pub cap: usize,
    /// Width C and heads NH of the local (tensor-parallel) part.
    pub c: usize,
    pub nh: usize,
}

/// Appends the new rows' keys and values (`qkv [·, 3C]`, rows `row0 ..`) to `kv` at
/// `start ..`, then for each new position p and head h:
/// `out[row0 + i, h] = softmax_s≤p(q·k_s / √hd) · v_s` (causal, i = p − start).
pub fn attention_cached(out: &mut [f32], qkv: &[f32], kv: &mut [f32], d: CachedDims) {
    let (c, hd) = (d.c, d.c / d.nh);
    let (keys, values) = kv.split_at_mut(d.cap * c);
    for i in 0..d.rows {
        let (row, p) = (&qkv[(d.row0 + i) * 3 * c..][..3 * c], d.start + i);
        keys[p * c..p * c + c].copy_from_slice(&row[c..2 * c]);
        values[p * c..p * c + c].copy_from_slice(&row[2 * c..]);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let mut w = vec![0.0f32; d.start + d.rows];
    for i in 0..d.rows {
        let p = d.start + i;
        let q = &qkv[(d.row0 + i) * 3 * c..];
        let o = &mut out[(d.row0 + i) * c..][..c];
        for h in 0..d.nh {
            let qh = &q[h * hd..h * hd + hd];
            let mut max = f32::NEG_INFINITY;
            for (s, ws) in w[..=p].iter_mut().enumerate() {
                let k = &keys[s * c + h * hd..][..hd];
                *ws = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*ws);
            }
            let mut sum = 0.0f32;
            for ws in &mut w[..=p] {
                *ws = (*ws - max).exp();
                sum += *ws;
            }
            let oh = &mut o[h * hd..h * hd + hd];
            oh.fill(0.0);
            for (s, &ws) in w[..=p].iter().enumerate() {
                let v = &values[s * c + h * hd..][..hd];
                let ws = ws / sum;
                oh.iter_mut().zip(v).for_each(|(a, &b)| *a += ws * b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::attention::{forward, AttnDims};

    /// Prefill then one position at a time gives the causal attention of the whole sequence.
    #[test]
    fn cached_equals_full_causal_attention() {
        let (t, c, nh) = (7, 8, 2);
        let qkv: Vec<f32> = (0..t * 3 * c)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let d = AttnDims { b: 1, t, c, nh };
        let (mut want, mut att) = (vec![0.0; t * c], vec![0.0; nh * t * t]);
        forward(
            &mut want,
            &mut att,
            &qkv,
            d,
            &crate::backend::cpu::matmul::Gemm::builtin(1),
        );
        let mut kv = vec![0.0; 2 * t * c];
        let mut got = vec![0.0; t * c];
        let dims = |row0, rows, start| CachedDims {
            row0,
            rows,
            start,
            cap: t,
            c,
            nh,
        };
        attention_cached(&mut got, &qkv, &mut kv, dims(0, 4, 0));
        for p in 4..t {
            attention_cached(&mut got, &qkv, &mut kv, dims(p, 1, p));
        }
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
