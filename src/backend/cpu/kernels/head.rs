//! The LM head: final LayerNorm, then logits against the tied token embedding.
//! `logits[N, Vp] = ln_f(x)[N, C] · wteᵀ` (wte `[Vp, C]`, no bias).

use crate::backend::cpu::matmul::{Gemm, Mat};

/// `logits [N, Vp] = xf [N, C] · wteᵀ`.
pub fn logits_forward(
    logits: &mut [f32],
    xf: &[f32],
    wte: &[f32],
    n: usize,
    c: usize,
    vp: usize,
    g: &Gemm,
) {
    g.matmul(
        logits,
        vp,
        Mat::new(xf, n, c),
        Mat::new(wte, vp, c).t(),
        false,
    );
}

/// Backward of the tied projection: `dxf [N, C] = dlogits · wte` (overwritten),
/// `dwte [Vp, C] += dlogitsᵀ · xf`.
#[allow(clippy::too_many_arguments)]
pub fn logits_backward(
    dxf: &mut [f32],
    dwte: &mut [f32],
    dlogits: &[f32],
    xf: &[f32],
    wte: &[f32],
    n: usize,
    c: usize,
    vp: usize,
    g: &Gemm,
) {
    g.matmul(
        dxf,
        c,
        Mat::new(dlogits, n, vp),
        Mat::new(wte, vp, c),
        false,
    );
    g.matmul(
        dwte,
        c,
        Mat::new(dlogits, n, vp).t(),
        Mat::new(xf, n, c),
        true,
    );
}
