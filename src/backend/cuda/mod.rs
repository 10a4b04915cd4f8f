//! The CUDA backend: NVRTC-compiled kernels from `kernels/` (`nvrtc.rs`, `kernels.rs`), cuBLASLt
//! GEMMs (`gemm.rs`) and the [`Backend`](crate::backend::Backend) implementation (`backend.rs`).
//! `device_count` checks for the driver first, so `train.backend = "cuda"` on a machine without
//! CUDA is a clean "no CUDA device found" error instead of cudarc's panic.

use anyhow::{bail, Result};

/// The device a rank with node-local rank `local_rank` uses among the `count` it sees:
/// `local_rank mod count` (one rank per GPU when a node runs as many ranks as it has GPUs).
pub fn device_for_local_rank(local_rank: usize, count: usize) -> usize {
    local_rank % count.max(1)
}

/// Number of CUDA devices, or an error "no CUDA device found" when the driver library is
/// absent or reports none. Never panics (cudarc panics if libcuda cannot be loaded, so the
/// library's presence is checked first).
pub fn device_count() -> Result<usize> {
    // SAFETY: only probes whether the shared library can be loaded.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        bail!("no CUDA device found (the CUDA driver library libcuda.so could not be loaded)");
    }
    let n = std::panic::catch_unwind(|| {
        cudarc::driver::result::init().ok()?;
        cudarc::driver::result::device::get_count().ok()
    })
    .ok()
    .flatten()
    .unwrap_or(0);
    if n <= 0 {
        bail!("no CUDA device found (the CUDA driver reports no usable device)");
    }
    Ok(n as usize)
}

mod attention;
pub mod backend;
pub mod chunks;
mod comm;
mod decode;
mod flash;
pub mod gemm;
pub mod kernels;
mod matmul;
mod mlp;
pub mod nvrtc;
mod vocab;
pub mod weights;

pub use backend::CudaBackend;

/// Marks of the per-op profile on a stream: timing events recorded into its work.
impl crate::backend::profile::Clock for cudarc::driver::CudaStream {
    type Mark = cudarc::driver::CudaEvent;
    fn mark(&self) -> anyhow::Result<Self::Mark> {
        let timed = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        Ok(self.record_event(Some(timed))?)
    }
    fn ms(&self, a: &Self::Mark, b: &Self::Mark) -> anyhow::Result<f64> {
        Ok(f64::from(a.elapsed_ms(b)?))
    }
}
