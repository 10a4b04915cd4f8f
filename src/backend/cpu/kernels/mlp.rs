//! The MLP of a block: `fc` (C → 4C), tanh-GELU, `proj` (4C → C).
//! GELU(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) — Hugging Face's `gelu_new`.

use crate::backend::cpu::math;
use crate::backend::cpu::simd::multiversion;
use rayon::prelude::*;

const GELU_K: f32 = 0.797_884_6; // sqrt(2/π)
const GELU_A: f32 = 0.044715;
const CHUNK: usize = 4096;

/// Forward GELU elementwise: `out = gelu(x)`, shapes `[N]`.
pub fn gelu_forward(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, xs)| gelu_chunk(o, xs));
}

multiversion! {
    fn gelu_chunk(o: &mut [f32], xs: &[f32]) {
        for (o, &x) in o.iter_mut().zip(xs) {
            let u = GELU_K * (x + GELU_A * x * x * x);
            *o = 0.5 * x * (1.0 + math::tanh(u));
        }
    }
}

/// `gelu'(x) = ½(1 + tanh u) + ½·x·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·x²)`,
/// `u = √(2/π)(x + 0.044715x³)`.
#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let u = GELU_K * (x + GELU_A * x * x * x);
    let th = math::tanh(u);
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_K * (1.0 + 3.0 * GELU_A * x * x)
}

/// Backward GELU: `dx = dy · gelu'(x)`, shapes `[N]`.
pub fn gelu_backward(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(d, (xs, dys))| gelu_backward_chunk(d, xs, dys));
}

multiversion! {
    fn gelu_backward_chunk(d: &mut [f32], xs: &[f32], dys: &[f32]) {
        for ((d, &x), &g) in d.iter_mut().zip(xs).zip(dys) {
            *d = g * gelu_grad(x);
        }
    }
}

/// Backward GELU in place: `d ← d · gelu'(x)` (the same values as [`gelu_backward`]).
pub fn gelu_backward_inplace(d: &mut [f32], x: &[f32]) {
    d.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, xs)| gelu_backward_inplace_chunk(d, xs));
}

multiversion! {
    fn gelu_backward_inplace_chunk(d: &mut [f32], xs: &[f32]) {
        for (d, &x) in d.iter_mut().zip(xs) {
            *d *= gelu_grad(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place backward (used by `linear_backward_dgelu`) gives the same bits as the
    /// out-of-place one.
    #[test]
    fn inplace_backward_equals_out_of_place() {
        let n = 10_001;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        let dy: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut dx = vec![0.0; n];
        gelu_backward(&mut dx, &x, &dy);
        let mut d = dy.clone();
        gelu_backward_inplace(&mut d, &x);
        assert!(d.iter().zip(&dx).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
