//! Attention against a KV cache on the device (`kernels/decode.cu`; CPU twin
//! `backend::cpu::decode::attention_cached`): generation's prefill and decode steps append to
//! and read the cache where it lives, instead of copying it to the host per layer and token.

use super::CudaBackend;
use crate::backend::cpu::decode::CachedDims;
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Threads per block of `attn_cached` (a multiple of 32).
const THREADS: u32 = 128;

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} does not fit in i32"))
}

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
        let ints = |v: &[(usize, &str)]| {
            v.iter()
                .map(|&(x, w)| i32_of(x, w))
                .collect::<Result<Vec<i32>>>()
        };
        let a = ints(&[
            (row0, "row0"),
            (rows, "rows"),
            (start, "start"),
            (cap, "cap"),
            (c, "C"),
            (nh, "NH"),
        ])?;
        let n = rows * c;
        let mut l = self.stream.launch_builder(self.k.f("attn_kv_append")?);
        l.arg(&mut *kv)
            .arg(qkv)
            .arg(&a[0])
            .arg(&a[1])
            .arg(&a[2])
            .arg(&a[3])
            .arg(&a[4]);
        let grid = u32::try_from(n.div_ceil(256)).context("grid too large")?;
        // SAFETY: kv holds [2, cap, C] and qkv rows row0 .. row0 + rows (checked above); the
        // kernel writes positions start .. start + rows < cap.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        let mut scores = self.stream.alloc_zeros::<f32>(rows * nh * cap)?;
        let scale = 1.0f32 / ((c / nh) as f32).sqrt();
        let mut l = self.stream.launch_builder(self.k.f("attn_cached")?);
        l.arg(out).arg(&mut scores).arg(qkv).arg(&*kv);
        l.arg(&a[0])
            .arg(&a[2])
            .arg(&a[3])
            .arg(&a[4])
            .arg(&a[5])
            .arg(&scale);
        // SAFETY: as above; scores holds [rows, NH, cap] and each block reads positions
        // 0 ..= start + i < cap of the cache.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (a[1] as u32, a[5] as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        Ok(())
    }
}
