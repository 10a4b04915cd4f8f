//! The materialised causal attention on the GPU: batched cuBLASLt GEMMs for S = Q·Kᵀ and
//! Y = P·V (and their backward), the softmax kernels between them, probabilities
//! `[B, NH, T, T]` kept for the backward. (`train.flash_attention` uses `flash.rs` instead.)

use super::backend::{shape, CudaBackend};
use super::gemm::Batch;
use super::matmul::op;
use crate::backend::cpu::kernels::attention::AttnDims;
use anyhow::Result;
use cudarc::driver::CudaSlice;

impl CudaBackend {
    /// `out [B, T, C]` and probabilities `att [B, NH, T, T]` from `qkv [B, T, 3C]`.
    pub(super) fn attention_forward_materialised(
        &self,
        out: &mut CudaSlice<f32>,
        att: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        d: AttnDims,
    ) -> Result<()> {
        let (t, hd, bh) = (d.t, d.c / d.nh, d.b * d.nh);
        let n = d.b * d.t * d.c;
        let (q, k, v) = self.split_qkv(qkv, d)?;
        let mut y = self.scratch(n)?;
        let (head, tt) = (t * hd, t * t);
        let qk = Batch {
            count: bh,
            stride_a: head,
            stride_b: head,
            stride_c: tt,
        };
        self.mm(
            att,
            t,
            op(q.as_view(), t, hd),
            op(k.as_view(), t, hd).t(),
            false,
            Some(qk),
            None,
        )?;
        self.k
            .causal_softmax_forward(&mut att.as_view_mut(), bh, t, 1.0 / (hd as f32).sqrt())?;
        let pv = Batch {
            count: bh,
            stride_a: tt,
            stride_b: head,
            stride_c: head,
        };
        self.mm(
            &mut y,
            hd,
            op(att.as_view(), t, t),
            op(v.as_view(), t, hd),
            false,
            Some(pv),
            None,
        )?;
        self.k
            .attn_merge_heads(&mut out.as_view_mut(), &y.as_view(), shape(d))
    }

    /// `dqkv [B, T, 3C]` (overwritten) from `dout [B, T, C]` and the saved probabilities.
    pub(super) fn attention_backward_materialised(
        &self,
        dqkv: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        att: &CudaSlice<f32>,
        d: AttnDims,
    ) -> Result<()> {
        let (t, hd, bh) = (d.t, d.c / d.nh, d.b * d.nh);
        let n = d.b * d.t * d.c;
        let (q, k, v) = self.split_qkv(qkv, d)?;
        let mut dy = self.scratch(n)?;
        self.k
            .attn_split_heads(&mut dy.as_view_mut(), &dout.as_view(), shape(d))?;
        let (head, tt) = (t * hd, t * t);
        let (mut dq, mut dk, mut dv, mut ds) = (
            self.scratch(n)?,
            self.scratch(n)?,
            self.scratch(n)?,
            self.scratch(bh * tt)?,
        );
        let tt_h = Some(Batch {
            count: bh,
            stride_a: tt,
            stride_b: head,
            stride_c: head,
        });
        let h_h = Some(Batch {
            count: bh,
            stride_a: head,
            stride_b: head,
            stride_c: tt,
        });
        // dV = Pᵀ·dY; dP = dY·Vᵀ (into ds); dS in place; dQ = dS·K; dK = dSᵀ·Q. With bf16
        // GEMMs dY and dS are rounded once for the two GEMMs each feeds.
        let dy16 = self.round_shared(&dy.as_view())?;
        self.mm(
            &mut dv,
            hd,
            op(att.as_view(), t, t).t(),
            op(dy.as_view(), t, hd).rounded(dy16.as_ref()),
            false,
            tt_h,
            None,
        )?;
        self.mm(
            &mut ds,
            t,
            op(dy.as_view(), t, hd).rounded(dy16.as_ref()),
            op(v.as_view(), t, hd).t(),
            false,
            h_h,
            None,
        )?;
        self.k.causal_softmax_backward(
            &mut ds.as_view_mut(),
            &att.as_view(),
            bh,
            t,
            1.0 / (hd as f32).sqrt(),
        )?;
        let ds16 = self.round_shared(&ds.as_view())?;
        self.mm(
            &mut dq,
            hd,
            op(ds.as_view(), t, t).rounded(ds16.as_ref()),
            op(k.as_view(), t, hd),
            false,
            tt_h,
            None,
        )?;
        self.mm(
            &mut dk,
            hd,
            op(ds.as_view(), t, t).rounded(ds16.as_ref()).t(),
            op(q.as_view(), t, hd),
            false,
            tt_h,
            None,
        )?;
        self.k.attn_merge_dqkv(
            &mut dqkv.as_view_mut(),
            &dq.as_view(),
            &dk.as_view(),
            &dv.as_view(),
            shape(d),
        )
    }
}
