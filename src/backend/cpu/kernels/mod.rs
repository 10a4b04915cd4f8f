//! The CPU twins of the model's kernels (llm.c style: each layer's forward and backward side
//! by side on flat row-major f32 slices, shapes in the doc comments; B batch, T time, C
//! channels, NH heads, hd = C / NH, Vp padded vocabulary). The CPU backend runs them; the CUDA
//! kernels in `kernels/*.cu` are tested against them.

pub mod attention;
pub mod embedding;
pub mod flash;
pub mod head;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod vocab_parallel;

/// `y += x` elementwise.
pub fn add_inplace(y: &mut [f32], x: &[f32]) {
    use rayon::prelude::*;
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(a, b)| add_chunk(a, b));
}

crate::backend::cpu::simd::multiversion! {
    fn add_chunk(a: &mut [f32], b: &[f32]) {
        for (a, b) in a.iter_mut().zip(b) {
            *a += b;
        }
    }
}
