//! Launches of the flash-attention kernels (`kernels/flash_attention.cu`; the algorithm and its
//! CPU twin: `model::gpt2::flash`).

use super::kernels::{AttnShape, Kernels};
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Rows per block and the largest head size of the kernels (`FA_ROWS`, `FA_HD_MAX`).
const ROWS: usize = 64;
pub const HD_MAX: usize = 128;

/// Threads sharing one row: the smallest power of two with 16 channels per thread.
fn threads_per_row(hd: usize) -> usize {
    hd.div_ceil(16).next_power_of_two()
}

/// Whether the kernels handle head size `hd`.
pub fn supports(hd: usize) -> bool {
    (1..=HD_MAX).contains(&hd)
}

/// Rows per block and the largest head size of the tensor-core kernels (`TC_ROWS`, `TC_HD`).
const TC_ROWS: usize = 64;
pub const TC_HD_MAX: usize = 64;

/// Whether the tensor-core kernels (`kernels/flash_attention_tc.cu`, bf16 WMMA) handle head
/// size `hd`: a multiple of 16 up to 64 (every GPT-2 size has 64).
pub fn supports_tc(hd: usize) -> bool {
    hd > 0 && hd.is_multiple_of(16) && hd <= TC_HD_MAX
}

/// Whether a GPU of architecture `arch` (`"sm_XY"`) has bf16 WMMA (compute capability 8.0+).
pub fn arch_has_bf16_mma(arch: &str) -> bool {
    arch.strip_prefix("sm_")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v >= 80)
}

/// Launch of `rows` rows per block with `threads` threads: grid (ceil(T / rows), B·NH).
fn grid(s: AttnShape, rows: usize, threads: usize) -> Result<LaunchConfig> {
    let bh = u32::try_from(s.b * s.nh)?;
    ensure!(
        bh <= 65_535,
        "flash attention: B·NH = {bh} exceeds the grid's 65535"
    );
    Ok(LaunchConfig {
        grid_dim: (u32::try_from(s.t.div_ceil(rows))?, bh, 1),
        block_dim: (u32::try_from(threads)?, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The tensor-core kernels: 4 warps per 64 rows.
fn tc_grid(s: AttnShape) -> Result<LaunchConfig> {
    grid(s, TC_ROWS, 128)
}

fn dims(s: AttnShape) -> Result<(i32, i32, i32, usize, f32)> {
    let hd = s.c / s.nh;
    ensure!(
        supports(hd) && s.c == hd * s.nh,
        "flash attention needs a head size of at most {HD_MAX} (got C = {}, NH = {})",
        s.c,
        s.nh
    );
    Ok((
        i32::try_from(s.t)?,
        i32::try_from(s.c)?,
        i32::try_from(s.nh)?,
        threads_per_row(hd),
        1.0 / (hd as f32).sqrt(),
    ))
}

impl Kernels {
    /// `out [B, T, C]` and `lse [B, NH, T]` from `qkv [B, T, 3C]`; `tc`: with the tensor-core
    /// kernels (bf16 operands, [`supports_tc`]).
    pub fn flash_forward(
        &self,
        out: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        s: AttnShape,
        tc: bool,
    ) -> Result<()> {
        let (t, c, nh, tpr, scale) = dims(s)?;
        ensure!(qkv.len() == 3 * s.b * s.t * s.c && out.len() == s.b * s.t * s.c);
        ensure!(lse.len() == s.b * s.nh * s.t, "lse must hold [B, NH, T]");
        if tc {
            ensure!(
                supports_tc(s.c / s.nh),
                "tensor-core flash attention: head size"
            );
            let mut l = self.stream.launch_builder(self.f("flash_tc_forward")?);
            l.arg(qkv)
                .arg(out)
                .arg(lse)
                .arg(&t)
                .arg(&c)
                .arg(&nh)
                .arg(&scale);
            unsafe { l.launch(tc_grid(s)?) }?;
            return Ok(());
        }
        let tpr_i = i32::try_from(tpr)?;
        let mut l = self.stream.launch_builder(self.f("flash_attn_forward")?);
        l.arg(qkv).arg(out).arg(lse).arg(&t).arg(&c).arg(&nh);
        l.arg(&tpr_i).arg(&scale);
        unsafe { l.launch(grid(s, ROWS, ROWS * tpr)?) }?;
        Ok(())
    }

    /// `dqkv [B, T, 3C]` (overwritten) from `dout [B, T, C]`, the forward's `out` and `lse`, and
    /// `qkv`; `dd [B, NH, T]` is scratch (D_i = dout_i · out_i); `tc` as in the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_backward(
        &self,
        dqkv: &mut CudaSlice<f32>,
        dd: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        out: &CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        s: AttnShape,
        tc: bool,
    ) -> Result<()> {
        let (t, c, nh, tpr, scale) = dims(s)?;
        let n = s.b * s.t * s.c;
        ensure!(qkv.len() == 3 * n && dqkv.len() == 3 * n);
        ensure!(dout.len() == n && out.len() == n);
        ensure!(lse.len() == s.b * s.nh * s.t && dd.len() == lse.len());
        let b = i32::try_from(s.b)?;
        let rows = lse.len();
        let mut l = self
            .stream
            .launch_builder(self.f("flash_attn_backward_dot")?);
        l.arg(dout)
            .arg(out)
            .arg(&mut *dd)
            .arg(&b)
            .arg(&t)
            .arg(&c)
            .arg(&nh);
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(rows.div_ceil(256))?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { l.launch(cfg) }?;
        if tc {
            ensure!(
                supports_tc(s.c / s.nh),
                "tensor-core flash attention: head size"
            );
            for name in ["flash_tc_backward_dq", "flash_tc_backward_dkv"] {
                let mut l = self.stream.launch_builder(self.f(name)?);
                l.arg(qkv).arg(dout).arg(lse).arg(&*dd).arg(&mut *dqkv);
                l.arg(&t).arg(&c).arg(&nh).arg(&scale);
                unsafe { l.launch(tc_grid(s)?) }?;
            }
            return Ok(());
        }
        let tpr_i = i32::try_from(tpr)?;
        for name in ["flash_attn_backward_dq", "flash_attn_backward_dkv"] {
            let mut l = self.stream.launch_builder(self.f(name)?);
            l.arg(qkv).arg(dout).arg(lse).arg(&*dd).arg(&mut *dqkv);
            l.arg(&t).arg(&c).arg(&nh).arg(&tpr_i).arg(&scale);
            unsafe { l.launch(grid(s, ROWS, ROWS * tpr)?) }?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_per_row_cover_the_head() {
        for (hd, tpr) in [
            (1, 1),
            (8, 1),
            (16, 1),
            (17, 2),
            (32, 2),
            (64, 4),
            (65, 8),
            (128, 8),
        ] {
            assert_eq!(threads_per_row(hd), tpr, "hd {hd}");
            assert!(tpr * 16 >= hd && tpr <= 8);
        }
        assert!(!supports(129) && !supports(0));
        for (hd, ok) in [
            (16, true),
            (48, true),
            (64, true),
            (8, false),
            (24, false),
            (80, false),
        ] {
            assert_eq!(supports_tc(hd), ok, "hd {hd}");
        }
        assert!(arch_has_bf16_mma("sm_80") && arch_has_bf16_mma("sm_90"));
        assert!(!arch_has_bf16_mma("sm_75") && !arch_has_bf16_mma("nonsense"));
    }
}
