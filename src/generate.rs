//! Text generation with a KV cache: each new token runs one position through the model,
//! attending to the cached keys and values of all earlier positions.
//!
//! Per layer, the cache holds K and V rows `[n_positions, C]` (heads side by side, as in
//! `c_attn`'s output). Sampling: greedy when `temperature == 0`, else softmax(logits / temp)
//! over the real vocabulary, optionally restricted to the top k, drawn with ChaCha8(seed).

use crate::model::gpt2::{layernorm, linear, mlp, Gpt2};
use anyhow::{bail, Result};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub seed: u64,
}

/// Cached keys/values of every layer for one sequence.
struct KvCache {
    k: Vec<Vec<f32>>, // [L][P, C]
    v: Vec<Vec<f32>>, // [L][P, C]
    len: usize,
}

/// Logits `[Vp]` for the token at position `cache.len`, appending its K/V to the cache.
fn step(model: &Gpt2, params: &[f32], token: u32, cache: &mut KvCache) -> Vec<f32> {
    let cfg = &model.cfg;
    let (c, nh, hd, pos) = (cfg.n_embd, cfg.n_head, cfg.head_dim(), cache.len);
    let ly = &model.layout;
    let g = &model.be.gemm;
    let (wte, wpe) = (ly.slice(params, ly.wte), ly.slice(params, ly.wpe));
    let mut x: Vec<f32> = (0..c)
        .map(|j| wte[token as usize * c + j] + wpe[pos * c + j])
        .collect();
    let (mut h, mut m, mut r) = (vec![0.0; c], [0.0f32], [0.0f32]);
    let (mut qkv, mut y, mut tmp) = (vec![0.0; 3 * c], vec![0.0; c], vec![0.0; c]);
    let (mut fc, mut gl) = (vec![0.0; 4 * c], vec![0.0; 4 * c]);
    for (l, bi) in ly.blocks.iter().enumerate() {
        let p = |i: usize| ly.slice(params, i);
        layernorm::forward(&mut h, &mut m, &mut r, &x, p(bi.ln1_w), p(bi.ln1_b));
        linear::forward(&mut qkv, &h, p(bi.qkv_w), p(bi.qkv_b), 1, c, 3 * c, g);
        cache.k[l][pos * c..pos * c + c].copy_from_slice(&qkv[c..2 * c]);
        cache.v[l][pos * c..pos * c + c].copy_from_slice(&qkv[2 * c..3 * c]);
        let scale = 1.0 / (hd as f32).sqrt();
        for head in 0..nh {
            let q = &qkv[head * hd..head * hd + hd];
            let mut w: Vec<f32> = (0..=pos)
                .map(|s| {
                    let k = &cache.k[l][s * c + head * hd..s * c + head * hd + hd];
                    q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            softmax(&mut w);
            let out = &mut y[head * hd..head * hd + hd];
            out.fill(0.0);
            for (s, &ws) in w.iter().enumerate() {
                let v = &cache.v[l][s * c + head * hd..s * c + head * hd + hd];
                out.iter_mut().zip(v).for_each(|(o, &vv)| *o += ws * vv);
            }
        }
        linear::forward(&mut tmp, &y, p(bi.proj_w), p(bi.proj_b), 1, c, c, g);
        x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
        layernorm::forward(&mut h, &mut m, &mut r, &x, p(bi.ln2_w), p(bi.ln2_b));
        linear::forward(&mut fc, &h, p(bi.fc_w), p(bi.fc_b), 1, c, 4 * c, g);
        mlp::gelu_forward(&mut gl, &fc);
        linear::forward(
            &mut tmp,
            &gl,
            p(bi.fcproj_w),
            p(bi.fcproj_b),
            1,
            4 * c,
            c,
            g,
        );
        x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
    }
    layernorm::forward(
        &mut h,
        &mut m,
        &mut r,
        &x,
        ly.slice(params, ly.lnf_w),
        ly.slice(params, ly.lnf_b),
    );
    cache.len += 1;
    let mut logits = vec![0.0f32; cfg.padded_vocab];
    crate::model::gpt2::head::logits_forward(&mut logits, &h, wte, 1, c, cfg.padded_vocab, g);
    logits
}

fn softmax(w: &mut [f32]) {
    let max = w.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for x in w.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    w.iter_mut().for_each(|x| *x /= sum);
}

/// Pick the next token from `logits[..V]`.
fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = |z: &[f32]| {
        z.iter()
            .enumerate()
            .fold(0, |bi, (i, &x)| if x > z[bi] { i } else { bi })
    };
    if s.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if s.top_k > 0 && s.top_k < idx.len() {
        idx.select_nth_unstable_by(s.top_k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(s.top_k);
        idx.sort_unstable();
    }
    let mut w: Vec<f32> = idx.iter().map(|&i| logits[i] / s.temperature).collect();
    softmax(&mut w);
    let u = (rng.next_u32() as f64 / 4294967296.0) as f32;
    let mut acc = 0.0;
    for (k, &p) in w.iter().enumerate() {
        acc += p;
        if u < acc {
            return idx[k] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

/// Generate up to `max_new` tokens after `prompt`; stops early at `stop` if given.
pub fn generate_ids(
    model: &Gpt2,
    params: &[f32],
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    stop: Option<u32>,
) -> Result<Vec<u32>> {
    let cfg = &model.cfg;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() + max_new > cfg.n_positions {
        bail!(
            "prompt ({} tokens) + --max-new-tokens ({max_new}) exceeds the model's context of {} positions",
            prompt.len(),
            cfg.n_positions
        );
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        bail!(
            "prompt token id {bad} is outside the vocabulary of {}",
            cfg.vocab_size
        );
    }
    let z = || vec![vec![0.0f32; cfg.n_positions * cfg.n_embd]; cfg.n_layer];
    let mut cache = KvCache {
        k: z(),
        v: z(),
        len: 0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut logits = Vec::new();
    for &t in prompt {
        logits = step(model, params, t, &mut cache);
    }
    let mut out = Vec::with_capacity(max_new);
    for i in 0..max_new {
        let next = sample(&logits[..cfg.vocab_size], s, &mut rng);
        out.push(next);
        if Some(next) == stop {
            break;
        }
        if i + 1 < max_new {
            logits = step(model, params, next, &mut cache);
        }
    }
    Ok(out)
}
