//! The MLP's GEMMs with cuBLASLt's GELU epilogues (`train.fuse_gelu`; see `gemm.rs`):
//!
//! - forward, `c_fc`: one GEMM writes `pre = x·W + b` (kept for the backward) and
//!   `out = gelu(pre)` — instead of the GEMM and a GELU kernel that reads `pre` back;
//! - backward, the projection's input gradient: one GEMM writes
//!   `dpre = (dy·Wᵀ) ⊙ gelu'(pre)` — instead of the GEMM and a GELU-backward kernel.
//!
//! Each saves a pass over the `[N, 4C]` activation (two reads and writes of 4·N·4C bytes
//! per block and micro-batch). Where cuBLASLt has no algorithm for an epilogue (a type pair
//! or alignment it does not take), the backend says so once and uses the separate kernels from
//! then on; the results are the same function either way (the tanh GELU), up to rounding.

use super::backend::CudaBackend;
use super::gemm::GeluAux;
use super::matmul::op;
use crate::backend::prelude::*;
use crate::backend::Region;
use anyhow::Result;
use cudarc::driver::CudaSlice;
use std::sync::atomic::Ordering;

impl CudaBackend {
    /// Fuse GELU into the MLP's GEMMs where cuBLASLt allows it (`train.fuse_gelu`).
    pub fn with_fused_gelu(self, on: bool) -> Self {
        self.fuse_gelu.store(on, Ordering::Relaxed);
        self
    }

    /// Whether the GELU epilogues are in use (asked for, and not refused by cuBLASLt so far).
    pub fn fused_gelu_active(&self) -> bool {
        self.fuse_gelu.load(Ordering::Relaxed)
    }

    /// cuBLASLt refused an epilogue: say why, once, and use the separate kernels from now on.
    fn gelu_refused(&self, e: anyhow::Error) {
        if self.fuse_gelu.swap(false, Ordering::Relaxed) {
            log::warn!(
                "train.fuse_gelu: cuBLASLt refused the GELU epilogue ({e:#}); \
                 using the separate GELU kernels"
            );
        }
    }

    /// [`Backend::linear_gelu_forward`]: `pre = x·W + b`, `out = gelu(pre)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fc_gelu_forward(
        &self,
        pre: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        w: Region,
        b: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        if self.fused_gelu_active() {
            let _op = self.prof.span(&*self.stream, "linear_gelu_forward");
            let bias = p.slice(b.range());
            let r = self.mm_gelu(
                out,
                oc,
                op(x.as_view(), n, ic),
                op(p.slice(w.range()), ic, oc),
                (b.len > 0).then_some(&bias),
                GeluAux::Forward(pre),
            );
            match r {
                Ok(()) => return Ok(()),
                Err(e) => self.gelu_refused(e),
            }
        }
        self.linear_forward(pre, x, p, w, b, n, ic, oc)?;
        self.gelu_forward(out, pre)
    }

    /// [`Backend::linear_backward_dgelu`]: `dpre = (dy·Wᵀ) ⊙ gelu'(pre)`, `dW += xᵀ·dy`,
    /// `db += Σ_rows dy`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proj_backward_dgelu(
        &self,
        dpre: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dw: Region,
        db: Region,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        pre: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        w: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        if self.fused_gelu_active() {
            let _op = self.prof.span(&*self.stream, "linear_backward_dgelu");
            let dy16 = self.round_shared(&dy.as_view())?;
            let r = self.mm_gelu(
                dpre,
                ic,
                op(dy.as_view(), n, oc).rounded(dy16.as_ref()),
                op(p.slice(w.range()), ic, oc).t(),
                None,
                GeluAux::Backward(pre),
            );
            match r {
                Ok(()) => return self.weight_grads(g, dw, db, dy, dy16.as_ref(), x, n, ic, oc),
                Err(e) => self.gelu_refused(e),
            }
        }
        let mut dx = self.scratch(n * ic)?;
        self.linear_backward(&mut dx, g, dw, db, dy, x, p, w, n, ic, oc)?;
        self.gelu_backward(dpre, pre, &dx)
    }
}
