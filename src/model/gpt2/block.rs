//! One transformer block (pre-LN):
//!   a = x + c_proj(attn(c_attn(ln_1(x))))
//!   y = a + mlp_proj(gelu(c_fc(ln_2(a))))
//! All activations are `[N = B·T, ·]` row-major; saved ones live in [`BlockActs`].
//!
//! Tensor parallelism (Megatron) over a TP group of size P, rank r: `c_attn` and `c_fc` are
//! column-parallel (rank r holds q, k, v columns of heads `r·NH/P ..` and `4C/P` MLP columns),
//! `c_proj` and `mlp.c_proj` row-parallel (matching input rows), LayerNorms and the
//! row-parallel biases replicated. Per sub-block one all-reduce forward (after the row-parallel
//! GEMM: "reduce from TP"; the bias is added on rank 0 only) and one backward (the input
//! gradient of the column-parallel GEMM: dual of "copy to TP"). With P = 1 it is the plain block.

use super::attention::AttnDims;
use crate::backend::{Backend, Region};
use crate::config::Recompute;
use crate::parallel::Tp;
use anyhow::Result;

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

/// Activations of one block saved for backward. N = B·T, P = TP size. What is kept depends on
/// `keep` (`train.recompute`): everything with `None`; all but `att` with `Selective` (the
/// probabilities are recomputed from `qkv` into [`BlockScratch`] in backward); only `out` with
/// `Full` (the stage reruns the block's forward into a full set before its backward). Buffers
/// not kept are empty.
pub struct BlockActs<B: Backend> {
    pub keep: Recompute,
    pub ln1: B::Buf,      // [N, C]
    pub ln1_mean: B::Buf, // [N]
    pub ln1_rstd: B::Buf, // [N]
    pub qkv: B::Buf,      // [N, 3C/P]
    pub att: B::Buf,      // what attention saves: P [B, NH/P, T, T] (or lse [B, NH/P, T])
    pub atty: B::Buf,     // [N, C/P]
    pub res2: B::Buf,     // [N, C]  x + attention branch
    pub ln2: B::Buf,      // [N, C]
    pub ln2_mean: B::Buf, // [N]
    pub ln2_rstd: B::Buf, // [N]
    pub fch: B::Buf,      // [N, 4C/P]  c_fc output; gelu(fch) is not kept (see backward)
    pub out: B::Buf,      // [N, C]  block output
}

impl<B: Backend> BlockActs<B> {
    /// For the full model pass `tp = 1`; for one TP rank of P, `tp = P`.
    pub fn new(
        be: &B,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        tp: usize,
        keep: Recompute,
    ) -> Result<Self> {
        let (n, cl) = (b * t, c / tp);
        let all = keep != Recompute::Full;
        let z = |len: usize, kept: bool| be.zeros(if kept { len } else { 0 });
        let att = be.attention_saved_len(AttnDims {
            b,
            t,
            c: cl,
            nh: nh / tp,
        });
        Ok(Self {
            keep,
            ln1: z(n * c, all)?,
            ln1_mean: z(n, all)?,
            ln1_rstd: z(n, all)?,
            qkv: z(n * 3 * cl, all)?,
            att: z(att, keep == Recompute::None)?,
            atty: z(n * cl, all)?,
            res2: z(n * c, all)?,
            ln2: z(n * c, all)?,
            ln2_mean: z(n, all)?,
            ln2_rstd: z(n, all)?,
            fch: z(n * 4 * cl, all)?,
            out: be.zeros(n * c)?,
        })
    }

    /// Floats this set holds.
    pub fn floats(&self, be: &B) -> usize {
        [
            &self.ln1,
            &self.ln1_mean,
            &self.ln1_rstd,
            &self.qkv,
            &self.att,
            &self.atty,
            &self.res2,
            &self.ln2,
            &self.ln2_mean,
            &self.ln2_rstd,
            &self.fch,
            &self.out,
        ]
        .iter()
        .map(|b| be.buf_len(b))
        .sum()
    }
}

/// Scratch reused by every block's forward and backward.
pub struct BlockScratch<B: Backend> {
    dln: B::Buf,   // [N, C]
    dqkv: B::Buf,  // [N, 3C]
    datty: B::Buf, // [N, C]
    /// `[N, 4C]`: `gelu(fch)` — in the forward, and recomputed in the backward for the MLP
    /// projection's weight gradient.
    fch4: B::Buf,
    /// `[N, 4C]`: `∂L/∂fch` (through the GELU, [`Backend::linear_backward_dgelu`]).
    dgelu: B::Buf,
    /// Attention's saved floats for blocks that do not keep them (`Selective`): written by the
    /// forward, recomputed by the backward; empty otherwise.
    att: B::Buf,
}

impl<B: Backend> BlockScratch<B> {
    /// `att_floats`: [`Backend::attention_saved_len`] of the local heads with selective
    /// recomputation, else 0.
    pub fn new(be: &B, n: usize, c: usize, tp: usize, att_floats: usize) -> Result<Self> {
        let cl = c / tp;
        Ok(Self {
            dln: be.zeros(n * c)?,
            dqkv: be.zeros(n * 3 * cl)?,
            datty: be.zeros(n * cl)?,
            fch4: be.zeros(n * 4 * cl)?,
            dgelu: be.zeros(n * 4 * cl)?,
            att: be.zeros(att_floats)?,
        })
    }
}

/// The bias of a row-parallel layer: added by TP rank 0 only, before the all-reduce.
pub(crate) fn row_bias(tp: &Tp, b: Region) -> Region {
    if tp.rank == 0 {
        b
    } else {
        Region { off: 0, len: 0 }
    }
}

/// Attention dimensions of this TP rank's heads.
fn local_dims(d: AttnDims, tp: &Tp) -> AttnDims {
    d.local(tp.size)
}

/// Forward of one block from input `x [N, C]`; fills `a`. `p` holds the block's parameter
/// regions (this TP rank's shards) inside the flat parameter buffer `params`; `d` is the full
/// model's shape. `gelu(fch)` goes to scratch `s`, not to `a` (recomputed in the backward, as
/// llm.c does: a fifth of the saved activations for one elementwise pass).
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    a: &mut BlockActs<B>,
    s: &mut BlockScratch<B>,
    x: &B::Buf,
    params: &B::Buf,
    p: &BlockTensors<Region>,
    d: AttnDims,
    tp: &Tp,
) -> Result<()> {
    let (n, c, cl) = (d.b * d.t, d.c, d.c / tp.size);
    be.layernorm_forward(
        &mut a.ln1,
        &mut a.ln1_mean,
        &mut a.ln1_rstd,
        x,
        params,
        p.ln1_w,
        p.ln1_b,
    )?;
    // Copy to TP (identity) → column-parallel c_attn → local heads.
    be.linear_forward(&mut a.qkv, &a.ln1, params, p.qkv_w, p.qkv_b, n, c, 3 * cl)?;
    let att = if a.keep == Recompute::Selective {
        &mut s.att
    } else {
        &mut a.att
    };
    be.attention_forward(&mut a.atty, att, &a.qkv, local_dims(d, tp))?;
    // Row-parallel c_proj → reduce from TP.
    let pb = row_bias(tp, p.proj_b);
    be.linear_forward(&mut a.res2, &a.atty, params, p.proj_w, pb, n, cl, c)?;
    tp.all_reduce(be, &mut a.res2)?;
    be.add_inplace(&mut a.res2, x)?;
    be.layernorm_forward(
        &mut a.ln2,
        &mut a.ln2_mean,
        &mut a.ln2_rstd,
        &a.res2,
        params,
        p.ln2_w,
        p.ln2_b,
    )?;
    // Copy to TP (identity) → column-parallel c_fc → GELU → row-parallel c_proj → reduce.
    be.linear_gelu_forward(
        &mut a.fch,
        &mut s.fch4,
        &a.ln2,
        params,
        p.fc_w,
        p.fc_b,
        n,
        c,
        4 * cl,
    )?;
    let fb = row_bias(tp, p.fcproj_b);
    be.linear_forward(&mut a.out, &s.fch4, params, p.fcproj_w, fb, n, 4 * cl, c)?;
    tp.all_reduce(be, &mut a.out)?;
    be.add_inplace(&mut a.out, &a.res2)
}

/// Backward of one block. On entry `dres [N, C]` is the gradient of the block output; on exit
/// it is the gradient of the block input `x`. Parameter gradients accumulate into `grads` at
/// the regions of `p` (gradients share the parameters' layout). The reduce regions' duals are
/// identities (`dres` is already replicated); the copy regions' duals all-reduce `dln`.
pub fn backward<B: Backend>(
    be: &B,
    dres: &mut B::Buf,
    grads: &mut B::Buf,
    s: &mut BlockScratch<B>,
    a: &BlockActs<B>,
    x: &B::Buf,
    params: &B::Buf,
    p: &BlockTensors<Region>,
    d: AttnDims,
    tp: &Tp,
) -> Result<()> {
    let (n, c, cl) = (d.b * d.t, d.c, d.c / tp.size);
    // MLP branch: out = res2 + proj(gelu(fc(ln2(res2)))); gelu(fch) recomputed.
    be.gelu_forward(&mut s.fch4, &a.fch)?;
    be.linear_backward_dgelu(
        &mut s.dgelu,
        grads,
        p.fcproj_w,
        p.fcproj_b,
        dres,
        &s.fch4,
        &a.fch,
        params,
        p.fcproj_w,
        n,
        4 * cl,
        c,
    )?;
    be.linear_backward(
        &mut s.dln,
        grads,
        p.fc_w,
        p.fc_b,
        &s.dgelu,
        &a.ln2,
        params,
        p.fc_w,
        n,
        c,
        4 * cl,
    )?;
    tp.all_reduce(be, &mut s.dln)?; // dual of copy to TP
    be.layernorm_backward(
        dres,
        grads,
        p.ln2_w,
        p.ln2_b,
        &s.dln,
        &a.res2,
        params,
        p.ln2_w,
        &a.ln2_mean,
        &a.ln2_rstd,
    )?;
    // Attention branch: res2 = x + proj(attn(qkv(ln1(x)))).
    let ld = local_dims(d, tp);
    if a.keep == Recompute::Selective {
        // Selective recomputation: the probabilities again from the kept qkv (the output
        // lands in datty, which the projection's backward overwrites next).
        be.attention_forward(&mut s.datty, &mut s.att, &a.qkv, ld)?;
    }
    let att = if a.keep == Recompute::Selective {
        &s.att
    } else {
        &a.att
    };
    be.linear_backward(
        &mut s.datty,
        grads,
        p.proj_w,
        p.proj_b,
        dres,
        &a.atty,
        params,
        p.proj_w,
        n,
        cl,
        c,
    )?;
    be.attention_backward(&mut s.dqkv, &s.datty, &a.atty, &a.qkv, att, ld)?;
    be.linear_backward(
        &mut s.dln,
        grads,
        p.qkv_w,
        p.qkv_b,
        &s.dqkv,
        &a.ln1,
        params,
        p.qkv_w,
        n,
        c,
        3 * cl,
    )?;
    tp.all_reduce(be, &mut s.dln)?; // dual of copy to TP
    be.layernorm_backward(
        dres,
        grads,
        p.ln1_w,
        p.ln1_b,
        &s.dln,
        x,
        params,
        p.ln1_w,
        &a.ln1_mean,
        &a.ln1_rstd,
    )
}

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
