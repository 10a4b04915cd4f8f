//! Choosing the next token from logits: greedy when `temperature == 0`, else
//! softmax(logits / temperature) over the real vocabulary, restricted to the `top_k` most
//! likely (0 = all) and then to the smallest set whose probability reaches `top_p` (1 = all),
//! drawn with the sequence's own ChaCha8 stream (seeded by `seed + prompt index`, so a prompt
//! gets the same tokens on every grid and in any batch).

use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha8Rng;

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

/// Softmax in place.
pub fn softmax(w: &mut [f32]) {
    let max = w.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for x in w.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    w.iter_mut().for_each(|x| *x /= sum);
}

/// The next token from `logits[..V]`.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
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
    }
    // Most likely first (ties by id), so top-p keeps a prefix.
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut w: Vec<f32> = idx.iter().map(|&i| logits[i] / s.temperature).collect();
    softmax(&mut w);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = w
            .iter()
            .position(|&p| {
                acc += p;
                acc >= s.top_p
            })
            .map_or(w.len(), |i| i + 1);
        w.truncate(keep);
        idx.truncate(keep);
        let sum: f32 = w.iter().sum();
        w.iter_mut().for_each(|p| *p /= sum);
    }
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
