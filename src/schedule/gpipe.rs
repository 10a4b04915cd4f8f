//! GPipe: all forwards, then all backwards (in reverse micro-batch order is not needed for
//! correctness; we keep ascending order so gradient accumulation order matches the 1-stage run).

use super::{backward, forward, Action};

/// Stage `s` of `p` with `m` micro-batches: F(0..m), then B(0..m).
pub fn gpipe(p: usize, m: usize, s: usize) -> Vec<Action> {
    let mut out = Vec::with_capacity(6 * m);
    for mb in 0..m {
        forward(&mut out, s, p, mb);
    }
    for mb in 0..m {
        backward(&mut out, s, p, mb);
    }
    out
}
