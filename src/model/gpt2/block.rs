//! One transformer block (pre-LN):
//!   a = x + c_proj(attn(c_attn(ln_1(x))))
//!   y = a + mlp_proj(gelu(c_fc(ln_2(a))))
//! All activations are `[N = B·T, ·]` row-major; saved ones live in [`BlockActs`].

use super::attention::{self, AttnDims};
use super::{layernorm, linear, mlp};

/// The twelve tensors of a block (parameters, or their gradients).
pub struct BlockTensors<T> {
    pub ln1_w: T,
    pub ln1_b: T,
    pub qkv_w: T,
    pub qkv_b: T,
    pub proj_w: T,
    pub proj_b: T,
    pub ln2_w: T,
    pub ln2_b: T,
    pub fc_w: T,
    pub fc_b: T,
    pub fcproj_w: T,
    pub fcproj_b: T,
}

impl<T> BlockTensors<T> {
    pub fn from_array(a: [T; 12]) -> Self {
        let [ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b] =
            a;
        Self {
            ln1_w,
            ln1_b,
            qkv_w,
            qkv_b,
            proj_w,
            proj_b,
            ln2_w,
            ln2_b,
            fc_w,
            fc_b,
            fcproj_w,
            fcproj_b,
        }
    }
}

/// Activations of one block saved for backward. N = B·T.
pub struct BlockActs {
    pub ln1: Vec<f32>,      // [N, C]
    pub ln1_mean: Vec<f32>, // [N]
    pub ln1_rstd: Vec<f32>, // [N]
    pub qkv: Vec<f32>,      // [N, 3C]
    pub att: Vec<f32>,      // [B, NH, T, T]
    pub atty: Vec<f32>,     // [N, C]
    pub res2: Vec<f32>,     // [N, C]  x + attention branch
    pub ln2: Vec<f32>,      // [N, C]
    pub ln2_mean: Vec<f32>, // [N]
    pub ln2_rstd: Vec<f32>, // [N]
    pub fch: Vec<f32>,      // [N, 4C]
    pub fch_gelu: Vec<f32>, // [N, 4C]
    pub out: Vec<f32>,      // [N, C]  block output
}

impl BlockActs {
    pub fn new(b: usize, t: usize, c: usize, nh: usize) -> Self {
        let n = b * t;
        let z = |k: usize| vec![0.0f32; k];
        Self {
            ln1: z(n * c),
            ln1_mean: z(n),
            ln1_rstd: z(n),
            qkv: z(n * 3 * c),
            att: z(b * nh * t * t),
            atty: z(n * c),
            res2: z(n * c),
            ln2: z(n * c),
            ln2_mean: z(n),
            ln2_rstd: z(n),
            fch: z(n * 4 * c),
            fch_gelu: z(n * 4 * c),
            out: z(n * c),
        }
    }
}

/// Scratch gradients reused by every block's backward.
pub struct BlockScratch {
    dln: Vec<f32>,   // [N, C]
    dqkv: Vec<f32>,  // [N, 3C]
    datty: Vec<f32>, // [N, C]
    dfch: Vec<f32>,  // [N, 4C]
    dgelu: Vec<f32>, // [N, 4C]
}

impl BlockScratch {
    pub fn new(n: usize, c: usize) -> Self {
        let z = |k: usize| vec![0.0f32; k];
        Self {
            dln: z(n * c),
            dqkv: z(n * 3 * c),
            datty: z(n * c),
            dfch: z(n * 4 * c),
            dgelu: z(n * 4 * c),
        }
    }
}

/// Forward of one block from input `x [N, C]`; fills `a`.
pub fn forward(
    a: &mut BlockActs,
    x: &[f32],
    p: &BlockTensors<&[f32]>,
    d: AttnDims,
    threads: usize,
) {
    let (n, c) = (d.b * d.t, d.c);
    layernorm::forward(
        &mut a.ln1,
        &mut a.ln1_mean,
        &mut a.ln1_rstd,
        x,
        p.ln1_w,
        p.ln1_b,
    );
    linear::forward(&mut a.qkv, &a.ln1, p.qkv_w, p.qkv_b, n, c, 3 * c, threads);
    attention::forward(&mut a.atty, &mut a.att, &a.qkv, d);
    linear::forward(&mut a.res2, &a.atty, p.proj_w, p.proj_b, n, c, c, threads);
    add_inplace(&mut a.res2, x);
    layernorm::forward(
        &mut a.ln2,
        &mut a.ln2_mean,
        &mut a.ln2_rstd,
        &a.res2,
        p.ln2_w,
        p.ln2_b,
    );
    linear::forward(&mut a.fch, &a.ln2, p.fc_w, p.fc_b, n, c, 4 * c, threads);
    mlp::gelu_forward(&mut a.fch_gelu, &a.fch);
    linear::forward(
        &mut a.out,
        &a.fch_gelu,
        p.fcproj_w,
        p.fcproj_b,
        n,
        4 * c,
        c,
        threads,
    );
    add_inplace(&mut a.out, &a.res2);
}

/// Backward of one block. On entry `dres [N, C]` is the gradient of the block output; on exit
/// it is the gradient of the block input `x`. Parameter gradients accumulate into `g`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dres: &mut [f32],
    g: &mut BlockTensors<&mut [f32]>,
    s: &mut BlockScratch,
    a: &BlockActs,
    x: &[f32],
    p: &BlockTensors<&[f32]>,
    d: AttnDims,
    threads: usize,
) {
    let (n, c) = (d.b * d.t, d.c);
    // MLP branch: out = res2 + proj(gelu(fc(ln2(res2)))).
    linear::backward(
        &mut s.dgelu,
        g.fcproj_w,
        g.fcproj_b,
        dres,
        &a.fch_gelu,
        p.fcproj_w,
        n,
        4 * c,
        c,
        threads,
    );
    mlp::gelu_backward(&mut s.dfch, &a.fch, &s.dgelu);
    linear::backward(
        &mut s.dln,
        g.fc_w,
        g.fc_b,
        &s.dfch,
        &a.ln2,
        p.fc_w,
        n,
        c,
        4 * c,
        threads,
    );
    layernorm::backward(
        dres,
        g.ln2_w,
        g.ln2_b,
        &s.dln,
        &a.res2,
        p.ln2_w,
        &a.ln2_mean,
        &a.ln2_rstd,
    );
    // Attention branch: res2 = x + proj(attn(qkv(ln1(x)))).
    linear::backward(
        &mut s.datty,
        g.proj_w,
        g.proj_b,
        dres,
        &a.atty,
        p.proj_w,
        n,
        c,
        c,
        threads,
    );
    attention::backward(&mut s.dqkv, &s.datty, &a.qkv, &a.att, d);
    linear::backward(
        &mut s.dln,
        g.qkv_w,
        g.qkv_b,
        &s.dqkv,
        &a.ln1,
        p.qkv_w,
        n,
        c,
        3 * c,
        threads,
    );
    layernorm::backward(
        dres,
        g.ln1_w,
        g.ln1_b,
        &s.dln,
        x,
        p.ln1_w,
        &a.ln1_mean,
        &a.ln1_rstd,
    );
}

/// `y += x` elementwise.
pub fn add_inplace(y: &mut [f32], x: &[f32]) {
    use rayon::prelude::*;
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(a, b)| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}
