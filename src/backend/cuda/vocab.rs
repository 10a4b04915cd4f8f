//! Vocab-parallel embedding and cross-entropy on the device (`kernels/vocab_parallel.cu`; CPU
//! twins in `model::gpt2::vocab_parallel` and `embedding::backward_shard`), replacing the
//! host-staged defaults, which copied the whole parameter buffer to the host per call.

use super::backend::segments;
use super::chunks::{shard_ids, shard_rows};
use super::CudaBackend;
use crate::backend::Region;
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

const THREADS: u32 = 256;

fn elementwise(n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (u32::try_from(n.div_ceil(THREADS as usize).max(1))?, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn i32s(v: &[usize]) -> Result<Vec<i32>> {
    v.iter()
        .map(|&x| i32::try_from(x).context("index does not fit in i32"))
        .collect()
}

/// Real local columns of a shard holding global columns `v0 .. v0 + vl` of a vocabulary of
/// `v` real entries.
fn valid_cols(vl: usize, v0: usize, v: usize) -> usize {
    v.saturating_sub(v0).min(vl)
}

impl CudaBackend {
    /// Targets as i32 on the device.
    fn targets(&self, targets: &[u32]) -> Result<CudaSlice<i32>> {
        let y = targets
            .iter()
            .map(|&x| i32::try_from(x).context("target id does not fit in i32"))
            .collect::<Result<Vec<i32>>>()?;
        Ok(self.stream.clone_htod(&y)?)
    }

    /// See [`crate::backend::Backend::embedding_forward_shard`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vp_embedding_forward(
        &self,
        out: &mut CudaSlice<f32>,
        tok: &[u32],
        p: &CudaSlice<f32>,
        wte: Region,
        wpe: Option<Region>,
        t: usize,
        c: usize,
        v0: usize,
    ) -> Result<()> {
        let n = tok.len();
        ensure!(
            out.len() == n * c && t > 0 && c > 0,
            "embedding shard: bad shapes"
        );
        let rows = self.stream.clone_htod(&shard_rows(tok, v0, wte.len / c))?;
        let wte_v = p.slice(wte.range());
        let (wpe_v, has) = match wpe {
            Some(r) => (p.slice(r.range()), 1i32),
            None => (p.slice(wte.range()), 0i32),
        };
        let d = i32s(&[n, t, c])?;
        let mut l = self
            .stream
            .launch_builder(self.k.f("vp_embedding_forward")?);
        l.arg(out).arg(&rows).arg(&wte_v).arg(&wpe_v).arg(&has);
        l.arg(&d[0]).arg(&d[1]).arg(&d[2]);
        unsafe { l.launch(elementwise(n * c)?) }?;
        Ok(())
    }

    /// See [`crate::backend::Backend::embedding_backward_shard`]: `dwpe` over all rows, `dwte`
    /// (local rows) from the rows whose token is in the shard, grouped by id on the host and
    /// added in order (deterministic, as the CPU twin).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vp_embedding_backward(
        &self,
        g: &mut CudaSlice<f32>,
        dwte: Region,
        dwpe: Region,
        dx: &CudaSlice<f32>,
        tok: &[u32],
        t: usize,
        c: usize,
        v0: usize,
    ) -> Result<()> {
        let n = tok.len();
        ensure!(
            dx.len() == n * c && t > 0 && n.is_multiple_of(t),
            "embedding shard: bad shapes"
        );
        let rows = dwte.len / c;
        self.k.embedding_backward_wpe(
            &mut g.slice_mut(dwpe.range()),
            &dx.as_view(),
            n / t,
            t,
            c,
        )?;
        // Other shards' tokens get the id `rows`, which sorts last: drop that segment.
        let (order, mut start, mut token) = segments(&shard_ids(tok, v0, rows));
        if token.last() == Some(&(rows as i32)) {
            token.pop();
            start.pop();
        }
        let s = &self.stream;
        let (order, start_d) = (s.clone_htod(&order)?, s.clone_htod(&start)?);
        let token_d = s.clone_htod(&token)?;
        self.k.embedding_backward_wte(
            &mut g.slice_mut(dwte.range()),
            &dx.as_view(),
            &order.as_view(),
            &start_d.as_view(),
            &token_d.as_view(),
            token.len(),
            c,
        )
    }

    /// See [`crate::backend::Backend::xent_partial`].
    pub(super) fn vp_xent_partial(
        &self,
        logits: &CudaSlice<f32>,
        stats: &mut CudaSlice<f32>,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
    ) -> Result<()> {
        let n = targets.len();
        ensure!(
            logits.len() >= n * vl && stats.len() >= 3 * n,
            "xent_partial: buffers shorter than {n} rows"
        );
        let y = self.targets(targets)?;
        let d = i32s(&[n, vl, v0, valid_cols(vl, v0, v)])?;
        let mut l = self.stream.launch_builder(self.k.f("vp_xent_partial")?);
        l.arg(logits).arg(stats).arg(&y);
        l.arg(&d[0]).arg(&d[1]).arg(&d[2]).arg(&d[3]);
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(n.max(1))?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    /// See [`crate::backend::Backend::xent_grad`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vp_xent_grad(
        &self,
        logits: &mut CudaSlice<f32>,
        ms: &CudaSlice<f32>,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
        scale: f32,
    ) -> Result<()> {
        let n = targets.len();
        ensure!(
            logits.len() >= n * vl && ms.len() >= 2 * n,
            "xent_grad: buffers shorter than {n} rows"
        );
        let y = self.targets(targets)?;
        let d = i32s(&[n, vl, v0, valid_cols(vl, v0, v)])?;
        let mut l = self.stream.launch_builder(self.k.f("vp_xent_grad")?);
        l.arg(logits).arg(ms).arg(&y);
        l.arg(&d[0]).arg(&d[1]).arg(&d[2]).arg(&d[3]).arg(&scale);
        unsafe { l.launch(elementwise(n * vl)?) }?;
        Ok(())
    }
}
