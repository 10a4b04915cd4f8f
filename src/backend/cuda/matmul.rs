//! GEMMs of the CUDA backend: operands as views of f32 buffers, run by cuBLASLt in the run's
//! precision (exact fp32, TF32, or bf16 operands with fp32 accumulation; `train.precision`).

use super::backend::CudaBackend;
use super::gemm::{Batch, GMat, GeluAux, Opts};
use super::kernels::Kernels;
use crate::backend::Region;
use crate::config::Precision;
use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};
use half::bf16;

/// A GEMM operand: a whole f32 buffer (or parameter region) read as `[rows, cols]` (per batch
/// element), optionally transposed.
pub(super) struct Op<'a> {
    v: CudaView<'a, f32>,
    rows: usize,
    cols: usize,
    t: bool,
    /// With bf16 GEMMs: `v` already rounded to bf16 (an operand two GEMMs share, rounded once).
    r16: Option<&'a Rounded>,
}

/// An f32 view rounded to bf16 once ([`CudaBackend::round_shared`]), with the device address
/// and length of the view it came from: it stands in only for that same view.
pub(super) struct Rounded {
    pub(super) src: u64,
    pub(super) len: usize,
    pub(super) buf: CudaSlice<bf16>,
}

pub(super) fn op(v: CudaView<'_, f32>, rows: usize, cols: usize) -> Op<'_> {
    Op {
        v,
        rows,
        cols,
        t: false,
        r16: None,
    }
}

impl<'a> Op<'a> {
    pub(super) fn t(self) -> Self {
        Self { t: !self.t, ..self }
    }

    /// The operand with its bf16 rounding made beforehand ([`CudaBackend::round_shared`]).
    pub(super) fn rounded(self, r16: Option<&'a Rounded>) -> Self {
        Self { r16, ..self }
    }
}

fn gmat<'a, T>(buf: &'a dyn DevicePtr<T>, o: &Op) -> GMat<'a, T> {
    let g = GMat::new(buf, o.rows, o.cols);
    if o.t {
        g.t()
    } else {
        g
    }
}

impl CudaBackend {
    /// `dst (+)= a·b (+ bias)` with fp32 accumulation. `Bf16`: both operands are rounded to
    /// bf16 first (as PyTorch's autocast does per op); `Tf32`/`Fp32`: fp32 inputs, tensor-core
    /// TF32 or exact products.
    pub(super) fn mm<D: DevicePtrMut<f32>>(
        &self,
        dst: &mut D,
        dst_rs: usize,
        a: Op,
        b: Op,
        acc: bool,
        batch: Option<Batch>,
        bias: Option<&CudaView<f32>>,
    ) -> Result<()> {
        let opts = Opts {
            accumulate: acc,
            batch,
            bias: bias.map(|x| x as &dyn DevicePtr<f32>),
            gelu: None,
        };
        self.run(dst, dst_rs, a, b, opts)
    }

    /// `dst = a·b (+ bias)` with a GELU epilogue ([`GeluAux`]): forward `pre ← a·b + bias`,
    /// `dst = gelu(pre)`; backward `dst = (a·b) ⊙ gelu'(pre)`. Precision as [`Self::mm`].
    pub(super) fn mm_gelu<'a, D: DevicePtrMut<f32>>(
        &self,
        dst: &mut D,
        dst_rs: usize,
        a: Op,
        b: Op,
        bias: Option<&'a CudaView<'_, f32>>,
        gelu: GeluAux<'a, f32>,
    ) -> Result<()> {
        let opts = Opts {
            bias: bias.map(|x| x as &dyn DevicePtr<f32>),
            gelu: Some(gelu),
            ..Opts::default()
        };
        self.run(dst, dst_rs, a, b, opts)
    }

    fn run<D: DevicePtrMut<f32>>(
        &self,
        dst: &mut D,
        dst_rs: usize,
        a: Op,
        b: Op,
        opts: Opts<'_, f32>,
    ) -> Result<()> {
        if self.precision == Precision::Bf16 {
            return self.with_bf16_operands((&a.v, a.r16), (&b.v, b.r16), |ab, bb| {
                self.gemm
                    .matmul::<bf16, f32>(dst, dst_rs, gmat(ab, &a), gmat(bb, &b), opts)
            });
        }
        self.gemm
            .matmul::<f32, f32>(dst, dst_rs, gmat(&a.v, &a), gmat(&b.v, &b), opts)
    }

    /// With bf16 GEMMs, `x` rounded to bf16 once for the GEMMs that share it (a backward's
    /// output gradient feeds both the input- and the weight-gradient GEMM); None otherwise.
    pub(super) fn round_shared(&self, x: &CudaView<f32>) -> Result<Option<Rounded>> {
        if self.precision != Precision::Bf16 {
            return Ok(None);
        }
        Ok(Some(Rounded {
            src: x.device_ptr(&self.stream).0,
            len: x.len(),
            buf: self.to_bf16(x)?,
        }))
    }

    pub(super) fn to_bf16(&self, x: &CudaView<f32>) -> Result<CudaSlice<bf16>> {
        // SAFETY: the cast kernel writes every element the GEMM reads (0 .. x.len()); the
        // extra element of an empty input is never read.
        let mut out = unsafe { self.stream.alloc::<bf16>(x.len().max(1))? };
        self.k.f32_to_bf16(&mut out.slice_mut(0..x.len()), x)?;
        Ok(out)
    }

    /// The parameter half of a linear layer's backward: `dW += xᵀ·dy`, `db += Σ_rows dy`
    /// (`dy16`: `dy` already rounded to bf16, with bf16 GEMMs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn weight_grads(
        &self,
        g: &mut CudaSlice<f32>,
        dw: Region,
        db: Region,
        dy: &CudaSlice<f32>,
        dy16: Option<&Rounded>,
        x: &CudaSlice<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        self.mm(
            &mut g.slice_mut(dw.range()),
            oc,
            op(x.as_view(), n, ic).t(),
            op(dy.as_view(), n, oc).rounded(dy16),
            true,
            None,
            None,
        )?;
        let mut scratch = self.scratch(Kernels::bias_scratch_len(n, oc))?;
        self.k.bias_grad(
            &mut g.slice_mut(db.range()),
            &mut scratch.as_view_mut(),
            &dy.as_view(),
            n,
            oc,
        )
    }
}
