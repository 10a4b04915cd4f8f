//! Megatron's parallel linear layers (`tensor_parallel/layers.py`) over a TP group of size P,
//! rank r, on flat parameter buffers (`w`, `b` are regions of this rank's shard). Rows are
//! tokens: `X [N, IC]`.
//!
//! - [`ColumnParallelLinear`]: rank r holds output columns `r·OC/P ..` of `W [IC, OC]` and `b`:
//!   `Y_r = X·W_r + b_r` (`[N, OC/P]`). Forward region: copy to TP (identity, X is replicated);
//!   backward dual: `∂X = Σ_r ∂Y_r·W_rᵀ`, one all-reduce.
//! - [`RowParallelLinear`]: rank r holds input rows `r·IC/P ..` of `W`, `b` replicated:
//!   `Y = Σ_r X_r·W_r + b` (`[N, OC]`), the bias added on rank 0 only before the all-reduce.
//!   Forward region: reduce from TP (one all-reduce); backward dual: identity (∂Y is
//!   replicated), `∂X_r = ∂Y·W_rᵀ`.
//!
//! With P = 1 both are `Y = X·W + b`.

use super::Tp;
use crate::backend::prelude::*;
use crate::backend::Region;
use anyhow::Result;

/// Output columns split over TP (see the module comment). `oc` is the local width OC/P.
#[derive(Clone, Copy, Debug)]
pub struct ColumnParallelLinear {
    pub w: Region,
    pub b: Region,
    pub ic: usize,
    pub oc: usize,
}

impl ColumnParallelLinear {
    /// `out [N, oc] = x [N, ic] · W_r + b_r` (copy to TP: identity).
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        out: &mut B::Buf,
        x: &B::Buf,
        params: &B::Buf,
        n: usize,
    ) -> Result<()> {
        be.linear_forward(out, x, params, self.w, self.b, n, self.ic, self.oc)
    }

    /// The MLP's `c_fc` with its GELU: `pre = x·W_r + b_r`, `out = gelu(pre)`
    /// ([`Ops::linear_gelu_forward`]).
    pub fn forward_gelu<B: Backend>(
        &self,
        be: &B,
        pre: &mut B::Buf,
        out: &mut B::Buf,
        x: &B::Buf,
        params: &B::Buf,
        n: usize,
    ) -> Result<()> {
        be.linear_gelu_forward(pre, out, x, params, self.w, self.b, n, self.ic, self.oc)
    }

    /// `dx = Σ_TP dy·W_rᵀ` (overwritten; the dual of copy to TP), `dW_r += xᵀ·dy`,
    /// `db_r += Σ_rows dy`.
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        tp: &Tp,
        dx: &mut B::Buf,
        grads: &mut B::Buf,
        dy: &B::Buf,
        x: &B::Buf,
        params: &B::Buf,
        n: usize,
    ) -> Result<()> {
        be.linear_backward(
            dx, grads, self.w, self.b, dy, x, params, self.w, n, self.ic, self.oc,
        )?;
        tp.all_reduce(be, dx)
    }
}

/// Input rows split over TP (see the module comment). `ic` is the local width IC/P.
#[derive(Clone, Copy, Debug)]
pub struct RowParallelLinear {
    pub w: Region,
    pub b: Region,
    pub ic: usize,
    pub oc: usize,
}

impl RowParallelLinear {
    /// The bias this rank adds: all of it on TP rank 0, none elsewhere.
    fn bias(&self, tp: &Tp) -> Region {
        if tp.rank == 0 {
            self.b
        } else {
            Region { off: 0, len: 0 }
        }
    }

    /// `out [N, oc] = Σ_TP x_r·W_r + b` (reduce from TP).
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        tp: &Tp,
        out: &mut B::Buf,
        x: &B::Buf,
        params: &B::Buf,
        n: usize,
    ) -> Result<()> {
        be.linear_forward(out, x, params, self.w, self.bias(tp), n, self.ic, self.oc)?;
        tp.all_reduce(be, out)
    }

    /// `dx_r = dy·W_rᵀ` (the dual of reduce from TP: dy is used as it is), `dW_r += x_rᵀ·dy`,
    /// `db += Σ_rows dy` (every rank: the bias is replicated).
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        dx: &mut B::Buf,
        grads: &mut B::Buf,
        dy: &B::Buf,
        x: &B::Buf,
        params: &B::Buf,
        n: usize,
    ) -> Result<()> {
        be.linear_backward(
            dx, grads, self.w, self.b, dy, x, params, self.w, n, self.ic, self.oc,
        )
    }

    /// As [`RowParallelLinear::backward`] for the MLP projection whose input was
    /// `act = gelu(pre)`: `dx_r` comes out multiplied by `gelu'(pre)`
    /// ([`Ops::linear_backward_dgelu`]).
    pub fn backward_dgelu<B: Backend>(
        &self,
        be: &B,
        dpre: &mut B::Buf,
        grads: &mut B::Buf,
        dy: &B::Buf,
        act: &B::Buf,
        pre: &B::Buf,
        params: &B::Buf,
        n: usize,
    ) -> Result<()> {
        be.linear_backward_dgelu(
            dpre, grads, self.w, self.b, dy, act, pre, params, self.w, n, self.ic, self.oc,
        )
    }
}
