//! Conv1D-style linear layer of GPT-2: `y[N, OC] = x[N, IC] · W[IC, OC] + b[OC]`
//! (Hugging Face stores `W` as `[in, out]`, and so do we).

use crate::backend::cpu::matmul::{add_column_sums, Gemm, Mat};
use rayon::prelude::*;

/// Forward: `out[N, OC] = x[N, IC] · w[IC, OC] + b`.
pub fn forward(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    g: &Gemm,
) {
    if b.is_empty() {
        out[..n * oc].fill(0.0);
    } else {
        out[..n * oc]
            .par_chunks_mut(oc)
            .for_each(|row| row.copy_from_slice(b));
    }
    g.matmul(out, oc, Mat::new(x, n, ic), Mat::new(w, ic, oc), true);
}

/// Backward, accumulating into the gradients:
/// `dx[N, IC] = dy · Wᵀ` (overwritten), `dW[IC, OC] += xᵀ · dy`, `db += Σ_rows dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    g: &Gemm,
) {
    g.matmul(dx, ic, Mat::new(dy, n, oc), Mat::new(w, ic, oc).t(), false);
    g.matmul(dw, oc, Mat::new(x, n, ic).t(), Mat::new(dy, n, oc), true);
    add_column_sums(db, dy, n, oc);
}
