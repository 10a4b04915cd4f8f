//! 1F1B (PipeDream-flush, Megatron's non-interleaved schedule): stage s first runs
//! w = min(p − s − 1, m) warm-up forwards, then alternates one forward and one backward, then
//! drains the remaining w backwards. At most min(p − s, m) activations are held at once, against
//! m for GPipe; the bubble is the same, (p − 1)/(m + p − 1) of the step.

use super::{backward, forward, Action};

/// Stage `s` of `p` with `m` micro-batches.
pub fn one_f_one_b(p: usize, m: usize, s: usize) -> Vec<Action> {
    let warmup = (p - s - 1).min(m);
    let mut out = Vec::with_capacity(6 * m);
    for mb in 0..warmup {
        forward(&mut out, s, p, mb);
    }
    for i in 0..m - warmup {
        forward(&mut out, s, p, warmup + i);
        backward(&mut out, s, p, i);
    }
    for i in m - warmup..m {
        backward(&mut out, s, p, i);
    }
    out
}
