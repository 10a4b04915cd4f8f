//! bf16 compute weights for `train.precision = "bf16"` (fp32 master weights, bf16 weights for
//! the GEMMs, as in llm.c and mixed-precision training generally).
//!
//! [`Backend::pin_weights`](crate::backend::Device::pin_weights) rounds the whole fp32
//! parameter buffer to bf16 once, at the start of a pipeline run (a training step or a
//! validation pass), and records its device address. While pinned, a GEMM operand that lies
//! inside that buffer (a weight region) reads the bf16 copy at the same offset; every other
//! operand (activations, gradients) is still rounded per GEMM. Without pinning each weight was
//! rounded again by every GEMM of every micro-batch: twice per layer and micro-batch, and the
//! tied `wte` twice per LM-head chunk.
//!
//! The copy is only valid while the run holds the parameters immutably borrowed, so
//! the pipeline engine (`parallel/pipeline.rs`) pins at its start and unpins when it returns (also on
//! errors): the recorded address can never name a changed or freed buffer. The rounding is the
//! same kernel the per-GEMM path uses, so pinned and unpinned GEMMs read identical bf16 values.

use super::backend::CudaBackend;
use super::matmul::Rounded;
use crate::config::Precision;
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr};
use half::bf16;

/// The bf16 copy of the pinned parameter buffer.
pub(super) struct Pinned {
    /// Device address and length (floats) of the fp32 buffer it copies.
    base: u64,
    len: usize,
    copy: CudaSlice<bf16>,
    /// False between runs: the allocation is kept for the next run, the contents are stale.
    active: bool,
}

/// A bf16 GEMM operand: a slice of the pinned weights, or a fresh rounding of an f32 view.
pub(super) enum Bf16Op<'a> {
    Pinned(CudaView<'a, bf16>),
    Rounded(CudaSlice<bf16>),
}

impl Bf16Op<'_> {
    pub(super) fn buf(&self) -> &dyn DevicePtr<bf16> {
        match self {
            Self::Pinned(v) => v,
            Self::Rounded(s) => s,
        }
    }
}

/// The element offset of a view of `len` f32 at device address `ptr` inside a buffer of `n`
/// f32 at `base`, or None unless it lies wholly inside (at a whole element).
pub fn offset_within(base: u64, n: usize, ptr: u64, len: usize) -> Option<usize> {
    let bytes = ptr.checked_sub(base)?;
    if bytes % 4 != 0 {
        return None;
    }
    let off = usize::try_from(bytes / 4).ok()?;
    (off.checked_add(len)? <= n).then_some(off)
}

impl CudaBackend {
    /// See [`crate::backend::Device::pin_weights`]: with bf16 GEMMs, round `p` into the bf16
    /// copy (reusing its allocation) and activate it; otherwise nothing.
    pub(super) fn pin(&self, p: &CudaSlice<f32>) -> Result<()> {
        if self.precision != Precision::Bf16 {
            return Ok(());
        }
        let mut slot = self
            .pinned
            .lock()
            .map_err(|_| anyhow!("bf16 weights: lock poisoned"))?;
        let base = p.device_ptr(&self.stream).0;
        let reuse = slot.take().filter(|old| old.copy.len() == p.len().max(1));
        let mut copy = match reuse {
            Some(old) => old.copy,
            // SAFETY: the cast below writes all p.len() elements before any GEMM reads them;
            // the extra element of an empty buffer is never read.
            None => unsafe { self.stream.alloc::<bf16>(p.len().max(1))? },
        };
        self.k
            .f32_to_bf16(&mut copy.slice_mut(0..p.len()), &p.as_view())?;
        *slot = Some(Pinned {
            base,
            len: p.len(),
            copy,
            active: true,
        });
        Ok(())
    }

    /// See [`crate::backend::Backend::unpin_weights`].
    pub(super) fn unpin(&self) {
        if let Ok(mut slot) = self.pinned.lock() {
            if let Some(p) = slot.as_mut() {
                p.active = false;
            }
        }
    }

    /// `dst (+)= a·b` on bf16 operands (fp32 accumulation): each operand's rounding made
    /// beforehand where given, else the pinned weights where the operand is one, else rounded
    /// now.
    pub(super) fn with_bf16_operands<R>(
        &self,
        a: (&CudaView<f32>, Option<&Rounded>),
        b: (&CudaView<f32>, Option<&Rounded>),
        f: impl FnOnce(&dyn DevicePtr<bf16>, &dyn DevicePtr<bf16>) -> Result<R>,
    ) -> Result<R> {
        let slot = self
            .pinned
            .lock()
            .map_err(|_| anyhow!("bf16 weights: lock poisoned"))?;
        let pinned = slot.as_ref().filter(|p| p.active);
        let oa = self.bf16_operand(a.0, a.1, pinned)?;
        let ob = self.bf16_operand(b.0, b.1, pinned)?;
        f(oa.buf(), ob.buf())
    }

    fn bf16_operand<'a>(
        &self,
        v: &CudaView<f32>,
        rounded: Option<&'a Rounded>,
        pinned: Option<&'a Pinned>,
    ) -> Result<Bf16Op<'a>> {
        if let Some(r) = rounded {
            let ptr = v.device_ptr(&self.stream).0;
            anyhow::ensure!(
                (r.src, r.len) == (ptr, v.len()),
                "bf16 operand: a rounding of {} floats at {:#x} given for {} at {ptr:#x}",
                r.len,
                r.src,
                v.len()
            );
            return Ok(Bf16Op::Pinned(r.buf.slice(0..v.len())));
        }
        if let Some(p) = pinned {
            let ptr = v.device_ptr(&self.stream).0;
            // Only 16-byte aligned views of the copy (offsets in multiples of 8 bf16): the
            // per-GEMM rounding's fresh buffers always are, and cuBLASLt may have no bf16
            // kernel for less (GPT-2's tensors all start at multiples of C = 768).
            if let Some(off) = offset_within(p.base, p.len, ptr, v.len()).filter(|o| o % 8 == 0) {
                return Ok(Bf16Op::Pinned(p.copy.slice(off..off + v.len())));
            }
        }
        Ok(Bf16Op::Rounded(self.to_bf16(v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::offset_within;

    #[test]
    fn views_inside_the_pinned_buffer_map_to_their_offset() {
        let base = 0x7f00_0000_0000u64;
        assert_eq!(offset_within(base, 100, base, 100), Some(0));
        assert_eq!(offset_within(base, 100, base + 40, 90), Some(10));
        assert_eq!(
            offset_within(base, 100, base + 40, 91),
            None,
            "runs past the end"
        );
        assert_eq!(offset_within(base, 100, base - 4, 1), None, "starts before");
        assert_eq!(
            offset_within(base, 100, base + 2, 1),
            None,
            "not at an element"
        );
        assert_eq!(offset_within(base, 100, base + 400, 0), Some(100));
        assert_eq!(offset_within(base, 100, u64::MAX - 3, 1), None);
    }
}
