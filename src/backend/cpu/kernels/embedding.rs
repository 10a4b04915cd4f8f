//! Token + position embedding: `x[b, t, :] = wte[tok[b, t], :] + wpe[t, :]`.
//! Shapes: tok `[B, T]`, wte `[Vp, C]`, wpe `[P, C]`, x `[B, T, C]`.

use rayon::prelude::*;

/// Forward: writes `out [B·T, C]` for tokens `tok [B·T]` (position t = row index mod T).
pub fn forward(out: &mut [f32], tok: &[u32], wte: &[f32], wpe: &[f32], t_len: usize, c: usize) {
    out.par_chunks_mut(c)
        .zip(tok.par_iter())
        .enumerate()
        .for_each(|(i, (o, &id))| {
            let t = i % t_len;
            let e = &wte[id as usize * c..id as usize * c + c];
            let p = &wpe[t * c..t * c + c];
            for j in 0..c {
                o[j] = e[j] + p[j];
            }
        });
}

/// Backward: `dwte[tok[i]] += dx[i]`, `dwpe[i mod T] += dx[i]`.
pub fn backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dx: &[f32],
    tok: &[u32],
    t_len: usize,
    c: usize,
) {
    backward_shard(dwte, dwpe, dx, tok, t_len, c, 0)
}

/// Backward of a vocabulary shard (see `vocab_parallel`): `dwte` is `[Vl, C]` for global rows
/// `v0 .. v0 + Vl`; tokens outside them add nothing to it. `dwpe` always accumulates.
/// Rows are grouped by token id with a counting sort; each output row is owned by one task and
/// sums its contributions in row order, so the result is independent of the thread count.
pub fn backward_shard(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dx: &[f32],
    tok: &[u32],
    t_len: usize,
    c: usize,
    v0: usize,
) {
    let vp = dwte.len() / c;
    // Local row of each token; tokens of other shards go to the ignored bucket `vp`.
    let tok: Vec<u32> = tok
        .iter()
        .map(|&id| match (id as usize).checked_sub(v0) {
            Some(r) if r < vp => r as u32,
            _ => vp as u32,
        })
        .collect();
    let tok = &tok[..];
    let mut start = vec![0usize; vp + 2];
    for &id in tok {
        start[id as usize + 1] += 1;
    }
    for v in 0..=vp {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; tok.len()];
    for (i, &id) in tok.iter().enumerate() {
        order[fill[id as usize]] = i;
        fill[id as usize] += 1;
    }
    dwte.par_chunks_mut(c).enumerate().for_each(|(v, out)| {
        for &i in &order[start[v]..start[v + 1]] {
            for (o, &g) in out.iter_mut().zip(&dx[i * c..i * c + c]) {
                *o += g;
            }
        }
    });
    let b = tok.len() / t_len;
    dwpe.par_chunks_mut(c)
        .take(t_len)
        .enumerate()
        .for_each(|(t, out)| {
            for bi in 0..b {
                let i = bi * t_len + t;
                for (o, &g) in out.iter_mut().zip(&dx[i * c..i * c + c]) {
                    *o += g;
                }
            }
        });
}
