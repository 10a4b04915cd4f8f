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
//! gradient of the column-parallel GEMM: dual of "copy to TP"), both inside the layers of
//! [`crate::layers`]. With P = 1 it is the plain block.

use crate::backend::prelude::*;
use crate::backend::AttnDims;
use crate::backend::Region;
use crate::config::Recompute;
use crate::layers::{ColumnParallelLinear, RowParallelLinear, Tp};
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
    /// `[N, 4C]`: `∂L/∂fch` (through the GELU, [`Ops::linear_backward_dgelu`]).
    dgelu: B::Buf,
    /// Attention's saved floats for blocks that do not keep them (`Selective`): written by the
    /// forward, recomputed by the backward; empty otherwise.
    att: B::Buf,
}

impl<B: Backend> BlockScratch<B> {
    /// `att_floats`: [`Ops::attention_saved_len`] of the local heads with selective
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

/// Attention dimensions of this TP rank's heads.
fn local_dims(d: AttnDims, tp: &Tp) -> AttnDims {
    d.local(tp.size)
}

/// A block's four linear layers on this TP rank (C wide, Cl = C/P local).
pub struct BlockLinears {
    /// `c_attn`: C → 3C, this rank's heads' q, k, v columns.
    pub qkv: ColumnParallelLinear,
    /// `attn.c_proj`: C → C, this rank's heads' rows.
    pub proj: RowParallelLinear,
    /// `mlp.c_fc`: C → 4C, this rank's columns.
    pub fc: ColumnParallelLinear,
    /// `mlp.c_proj`: 4C → C, the matching rows.
    pub fcproj: RowParallelLinear,
}

impl BlockLinears {
    pub fn new(p: &BlockTensors<Region>, c: usize, tp: usize) -> Self {
        let cl = c / tp;
        Self {
            qkv: ColumnParallelLinear {
                w: p.qkv_w,
                b: p.qkv_b,
                ic: c,
                oc: 3 * cl,
            },
            proj: RowParallelLinear {
                w: p.proj_w,
                b: p.proj_b,
                ic: cl,
                oc: c,
            },
            fc: ColumnParallelLinear {
                w: p.fc_w,
                b: p.fc_b,
                ic: c,
                oc: 4 * cl,
            },
            fcproj: RowParallelLinear {
                w: p.fcproj_w,
                b: p.fcproj_b,
                ic: 4 * cl,
                oc: c,
            },
        }
    }
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
    let n = d.b * d.t;
    let l = BlockLinears::new(p, d.c, tp.size);
    be.layernorm_forward(
        &mut a.ln1,
        &mut a.ln1_mean,
        &mut a.ln1_rstd,
        x,
        params,
        p.ln1_w,
        p.ln1_b,
    )?;
    l.qkv.forward(be, &mut a.qkv, &a.ln1, params, n)?;
    let att = if a.keep == Recompute::Selective {
        &mut s.att
    } else {
        &mut a.att
    };
    be.attention_forward(&mut a.atty, att, &a.qkv, local_dims(d, tp))?;
    l.proj.forward(be, tp, &mut a.res2, &a.atty, params, n)?;
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
    l.fc.forward_gelu(be, &mut a.fch, &mut s.fch4, &a.ln2, params, n)?;
    l.fcproj.forward(be, tp, &mut a.out, &s.fch4, params, n)?;
    be.add_inplace(&mut a.out, &a.res2)
}

/// Backward of one block. On entry `dres [N, C]` is the gradient of the block output; on exit
/// it is the gradient of the block input `x`. Parameter gradients accumulate into `grads` at
/// the regions of `p` (gradients share the parameters' layout). The layers' backward duals do
/// the TP communication (the column-parallel ones sum their input gradient).
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
    let n = d.b * d.t;
    let l = BlockLinears::new(p, d.c, tp.size);
    // MLP branch: out = res2 + proj(gelu(fc(ln2(res2)))); gelu(fch) recomputed.
    be.gelu_forward(&mut s.fch4, &a.fch)?;
    l.fcproj
        .backward_dgelu(be, &mut s.dgelu, grads, dres, &s.fch4, &a.fch, params, n)?;
    l.fc.backward(be, tp, &mut s.dln, grads, &s.dgelu, &a.ln2, params, n)?;
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
    l.proj
        .backward(be, &mut s.datty, grads, dres, &a.atty, params, n)?;
    be.attention_backward(&mut s.dqkv, &s.datty, &a.atty, &a.qkv, att, ld)?;
    l.qkv
        .backward(be, tp, &mut s.dln, grads, &s.dqkv, &a.ln1, params, n)?;
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
