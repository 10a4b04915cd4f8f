//! Attention against a KV cache on the device (`kernels/decode.cu`; CPU twin
//! `backend::cpu::decode::attention_cached`): generation's prefill and decode steps append to
//! and read the cache where it lives, instead of copying it to the host per layer and token.

use super::kernels::{cfg, grid_for, i32_of};
use super::CudaBackend;
use crate::backend::cpu::decode::CachedDims;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Threads per block of `attn_cached` (a multiple of 32).
const THREADS: u32 = 128;

impl CudaBackend {
    /// See [`crate::backend::Ops::attention_cached`]: the new rows' keys and values appended
    /// (`attn_kv_append`, one thread per element), then one block per (new row, head) over
    /// the cached positions (`attn_cached`, its scores in a scratch `[rows, NH, cap]`).
    pub(super) fn decode_attention(
        &self,
        out: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        kv: &mut CudaSlice<f32>,
        d: CachedDims,
    ) -> Result<()> {
        let CachedDims {
            row0,
            rows,
            start,
            cap,
            c,
            nh,
        } = d;
        ensure!(
            rows > 0 && nh > 0 && c % nh == 0 && start + rows <= cap,
            "cached attention: {rows} new rows at {start} in a cache of {cap} ({c} channels, {nh} heads)"
        );
        ensure!(
            qkv.len() >= (row0 + rows) * 3 * c
                && out.len() >= (row0 + rows) * c
                && kv.len() == 2 * cap * c,
            "cached attention: buffers of {}, {}, {} floats are too short",
            qkv.len(),
            out.len(),
            kv.len()
        );
        // The kernels' int arguments (the usize values still size the buffers below).
        let (rows_i, cap_i) = (i32_of(rows, "rows")?, i32_of(cap, "cap")?);
        let (c_i, nh_i) = (i32_of(c, "C")?, i32_of(nh, "NH")?);
        let (row0, start) = (i32_of(row0, "row0")?, i32_of(start, "start")?);
        let mut l = self.stream.launch_builder(self.k.f("attn_kv_append")?);
        l.arg(&mut *kv).arg(qkv).arg(&row0).arg(&rows_i).arg(&start);
        l.arg(&cap_i).arg(&c_i);
        // SAFETY: kv holds [2, cap, C] and qkv rows row0 .. row0 + rows (checked above); the
        // kernel writes positions start .. start + rows < cap.
        unsafe { l.launch(cfg(grid_for(rows * c, 256)?, 256)) }?;
        let mut scores = self.stream.alloc_zeros::<f32>(rows * nh * cap)?;
        let scale = 1.0f32 / ((c / nh) as f32).sqrt();
        let mut l = self.stream.launch_builder(self.k.f("attn_cached")?);
        l.arg(out).arg(&mut scores).arg(qkv).arg(&*kv);
        l.arg(&row0)
            .arg(&start)
            .arg(&cap_i)
            .arg(&c_i)
            .arg(&nh_i)
            .arg(&scale);
        // SAFETY: as above; scores holds [rows, NH, cap] and each block reads positions
        // 0 ..= start + i < cap of the cache.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (rows_i as u32, nh_i as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        Ok(())
    }
}
