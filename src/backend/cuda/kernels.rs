//! Typed launch wrappers for the NVRTC kernels in `kernels/*.cu`.
//!
//! Each method mirrors its CPU twin (same argument order where possible, device views instead
//! of slices) and checks buffer lengths against the dimensions before launching, so a wrong
//! size is an error rather than an out-of-bounds write. Inputs are `&CudaView`, outputs
//! `&mut CudaViewMut` (use `slice.as_view()` / `slice.slice_mut(a..b)` to pass a sub-range of
//! a flat buffer). All launches are asynchronous on [`Kernels::stream`].
//!
//! Launch configurations (documented per method):
//! - elementwise kernels: 256 threads per block, one thread per element
//!   (grid-stride loops capped at [`MAX_GRID`] blocks where the kernel has one);
//! - row kernels (layernorm, causal softmax): one warp per row, 8 rows per 256-thread block;
//! - reductions: fixed grids ([`SUMSQ_PARTS`] blocks) or 64-row chunks, then a fixed-order
//!   second pass — results do not depend on the device or on timing.

use super::chunks::adam_chunks;
use super::nvrtc;
use crate::backend::{AdamStep, Region};
use anyhow::{ensure, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig,
    PushKernelArg,
};
use half::bf16;
use std::collections::HashMap;
use std::sync::Arc;

/// Threads per block of the elementwise and column kernels.
const THREADS: u32 = 256;
/// Cap on the grid of grid-stride kernels.
pub const MAX_GRID: u32 = 65_535;
/// Blocks of `sum_squares_partial` (fixed, for a device-independent result).
pub const SUMSQ_PARTS: usize = 512;
/// Rows per partial sum in the layernorm and bias backward passes (= the CPU twin's chunk).
pub const ROWS_PER_PART: usize = 64;
/// Threads per block of `softmax_xent` (one block per row).
const XENT_THREADS: u32 = 512;

pub use super::nvrtc::FUNCTIONS;

/// `"sm_XY"` for the context's device (compute capability X.Y).
pub fn device_arch(ctx: &Arc<CudaContext>) -> Result<String> {
    let (major, minor) = ctx
        .compute_capability()
        .context("querying the device's compute capability")?;
    Ok(format!("sm_{major}{minor}"))
}

/// Host-side grouping of token positions by id for [`Kernels::embedding_backward_wte`]
/// (counting sort, as the CPU twin): segment s covers `order[seg_start[s]..seg_start[s+1]]`,
/// all positions with token `seg_token[s]`, in increasing position order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSegments {
    pub order: Vec<i32>,
    pub seg_start: Vec<i32>,
    pub seg_token: Vec<i32>,
}

impl EmbeddingSegments {
    /// Groups `tok [N]` (ids < `vp`).
    pub fn from_tokens(tok: &[u32], vp: usize) -> Result<Self> {
        let mut count = vec![0usize; vp + 1];
        for (i, &id) in tok.iter().enumerate() {
            ensure!(
                (id as usize) < vp,
                "token {id} at {i} is >= padded vocab {vp}"
            );
            count[id as usize + 1] += 1;
        }
        for v in 0..vp {
            count[v + 1] += count[v];
        }
        let mut fill = count.clone();
        let mut order = vec![0i32; tok.len()];
        for (i, &id) in tok.iter().enumerate() {
            order[fill[id as usize]] = i32::try_from(i).context("too many tokens")?;
            fill[id as usize] += 1;
        }
        let (mut seg_start, mut seg_token) = (Vec::new(), Vec::new());
        for v in 0..vp {
            if count[v + 1] > count[v] {
                seg_start.push(count[v] as i32);
                seg_token.push(v as i32);
            }
        }
        seg_start.push(tok.len() as i32);
        Ok(Self {
            order,
            seg_start,
            seg_token,
        })
    }

    pub fn num_segs(&self) -> usize {
        self.seg_token.len()
    }
}

/// The loaded kernels and the stream they launch on.
pub struct Kernels {
    funcs: HashMap<&'static str, CudaFunction>,
    pub(super) stream: Arc<CudaStream>,
}

pub(super) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} does not fit in i32"))
}

pub(super) fn grid_for(n: usize, threads: u32) -> Result<u32> {
    u32::try_from(n.div_ceil(threads as usize).max(1)).context("grid too large")
}

pub(super) fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grid-stride elementwise launch: 256 threads, ≤ [`MAX_GRID`] blocks.
fn elementwise(n: usize) -> LaunchConfig {
    cfg(
        n.div_ceil(THREADS as usize).clamp(1, MAX_GRID as usize) as u32,
        THREADS,
    )
}

/// One warp per row, 8 rows per block.
fn rows(n_rows: usize) -> Result<LaunchConfig> {
    Ok(cfg(grid_for(n_rows, 8)?, THREADS))
}

macro_rules! check_len {
    ($buf:expr, $want:expr) => {
        ensure!(
            $buf.len() == $want,
            "{}: length {} but the dimensions need {}",
            stringify!($buf),
            $buf.len(),
            $want
        )
    };
}

impl Kernels {
    /// Compiles (through the PTX cache, see [`nvrtc::compile`]) and loads every kernel for
    /// `arch` (e.g. from [`device_arch`]); launches go to `stream`.
    pub fn load(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>, arch: &str) -> Result<Self> {
        let include = nvrtc::find_cuda_include()?;
        // Named up front; the load below is what decides (it fails on PTX it cannot take).
        let mismatch = nvrtc::log_versions(arch, &include)?;
        let mut funcs = HashMap::new();
        let core = [include];
        for (file, names) in FUNCTIONS {
            if *file != "flash_attention_tc" {
                let why = mismatch.as_deref();
                funcs.extend(nvrtc::load_file(ctx, file, names, arch, &core, why)?);
                continue;
            }
            // Optional: without bf16 MMA (before sm_80) or mma.h's crt/ part, flash attention
            // keeps its fp32 kernels. crt/ may come from another directory than the core
            // headers (a later include path, for this file only).
            if !super::flash::arch_has_bf16_mma(arch) {
                continue;
            }
            let mut inc = core.to_vec();
            inc.extend(nvrtc::find_mma_include().filter(|d| *d != core[0]));
            match nvrtc::load_file(ctx, file, names, arch, &inc, mismatch.as_deref()) {
                Ok(v) => funcs.extend(v),
                Err(e) => {
                    let hint = if format!("{e:#}").contains("mma.h") {
                        "; mma.h needs crt/mma.h (pip: nvidia-cuda-crt)"
                    } else {
                        ""
                    };
                    log::warn!("tensor-core flash attention unavailable ({e:#}){hint}");
                }
            }
        }
        Ok(Self { funcs, stream })
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether kernel `name` was loaded (some need a newer GPU).
    pub fn has(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    pub(super) fn f(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .with_context(|| format!("kernel {name} not loaded"))
    }
}

// Launches. Every `unsafe` block below is a kernel launch whose argument list matches the
// kernel's C signature (pointers, then i32/i64/f32 scalars) and whose buffers were checked
// against the dimensions the kernel indexes with.
impl Kernels {
    /// `out[i, :] = wte[tok[i], :] + wpe[i mod T, :]`; out `[N, C]`, tok `[N]` (ids < Vp),
    /// wte `[Vp, C]`, wpe `[≥T, C]`. One thread per output element.
    pub fn embedding_forward(
        &self,
        out: &mut CudaViewMut<f32>,
        tok: &CudaView<i32>,
        wte: &CudaView<f32>,
        wpe: &CudaView<f32>,
        n: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        check_len!(out, n * c);
        check_len!(tok, n);
        ensure!(wpe.len() >= t * c, "wpe too short for T = {t}");
        ensure!(
            t > 0 && n.is_multiple_of(t),
            "N = {n} is not a multiple of T = {t}"
        );
        let (ni, ti, ci) = (i32_of(n, "N")?, i32_of(t, "T")?, i32_of(c, "C")?);
        let f = self.f("embedding_forward")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out)
            .arg(tok)
            .arg(wte)
            .arg(wpe)
            .arg(&ni)
            .arg(&ti)
            .arg(&ci);
        unsafe { b.launch(cfg(grid_for(n * c, THREADS)?, THREADS)) }?;
        Ok(())
    }

    /// `dwpe[t, :] += Σ_b dout[b·T + t, :]` (b in order); dout `[B·T, C]`, dwpe `[≥T, C]`.
    /// One thread per (t, c).
    pub fn embedding_backward_wpe(
        &self,
        dwpe: &mut CudaViewMut<f32>,
        dout: &CudaView<f32>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        check_len!(dout, b * t * c);
        ensure!(dwpe.len() >= t * c, "dwpe too short for T = {t}");
        let (bi, ti, ci) = (i32_of(b, "B")?, i32_of(t, "T")?, i32_of(c, "C")?);
        let f = self.f("embedding_backward_wpe")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(dwpe).arg(dout).arg(&bi).arg(&ti).arg(&ci);
        unsafe { l.launch(cfg(grid_for(t * c, THREADS)?, THREADS)) }?;
        Ok(())
    }

    /// `dwte[seg_token[s], :] += Σ_{r ∈ segment s} dout[order[r], :]`, rows added in order
    /// (see [`EmbeddingSegments`], uploaded as i32). One 256-thread block per segment,
    /// threads over channels. `dwte [Vp, C]`, dout `[N, C]`.
    #[allow(clippy::too_many_arguments)]
    pub fn embedding_backward_wte(
        &self,
        dwte: &mut CudaViewMut<f32>,
        dout: &CudaView<f32>,
        order: &CudaView<i32>,
        seg_start: &CudaView<i32>,
        seg_token: &CudaView<i32>,
        num_segs: usize,
        c: usize,
    ) -> Result<()> {
        ensure!(
            dout.len() == order.len() * c,
            "dout is not [N, C] for N = order.len()"
        );
        check_len!(seg_start, num_segs + 1);
        check_len!(seg_token, num_segs);
        ensure!(c > 0 && dwte.len().is_multiple_of(c), "dwte is not [Vp, C]");
        if num_segs == 0 {
            return Ok(());
        }
        let (si, ci) = (i32_of(num_segs, "segments")?, i32_of(c, "C")?);
        let f = self.f("embedding_backward_wte")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(dwte)
            .arg(dout)
            .arg(order)
            .arg(seg_start)
            .arg(seg_token)
            .arg(&si)
            .arg(&ci);
        unsafe { l.launch(cfg(u32::try_from(num_segs)?, THREADS)) }?;
        Ok(())
    }

    /// LayerNorm forward: out `[N, C]`, mean/rstd `[N]`, x `[N, C]`, w/b `[C]`.
    /// One warp per row, 8 rows per block.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward(
        &self,
        out: &mut CudaViewMut<f32>,
        mean: &mut CudaViewMut<f32>,
        rstd: &mut CudaViewMut<f32>,
        x: &CudaView<f32>,
        w: &CudaView<f32>,
        b: &CudaView<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_len!(out, n * c);
        check_len!(x, n * c);
        check_len!(mean, n);
        check_len!(rstd, n);
        check_len!(w, c);
        check_len!(b, c);
        let (ni, ci) = (i32_of(n, "N")?, i32_of(c, "C")?);
        let f = self.f("layernorm_forward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(out)
            .arg(mean)
            .arg(rstd)
            .arg(x)
            .arg(w)
            .arg(b)
            .arg(&ni)
            .arg(&ci);
        unsafe { l.launch(rows(n)?) }?;
        Ok(())
    }

    /// Scratch length (f32) that [`Self::layernorm_backward`] needs: `ceil(N/64)·2C`.
    pub fn layernorm_scratch_len(n: usize, c: usize) -> usize {
        n.div_ceil(ROWS_PER_PART) * 2 * c
    }

    /// LayerNorm backward: `dx += …` (accumulates), `dw += Σ dy·n̂`, `db += Σ dy`.
    /// Kernel 1: one 256-thread block per 64 rows (a warp per row for dx, threads over columns
    /// for the partial dw/db sums into `scratch [ceil(N/64), 2C]`); kernels 2–3:
    /// `column_reduce` adds the partials into dw and db in fixed order.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &self,
        dx: &mut CudaViewMut<f32>,
        dw: &mut CudaViewMut<f32>,
        db: &mut CudaViewMut<f32>,
        scratch: &mut CudaViewMut<f32>,
        dy: &CudaView<f32>,
        x: &CudaView<f32>,
        w: &CudaView<f32>,
        mean: &CudaView<f32>,
        rstd: &CudaView<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_len!(dx, n * c);
        check_len!(dy, n * c);
        check_len!(x, n * c);
        check_len!(mean, n);
        check_len!(rstd, n);
        check_len!(w, c);
        check_len!(dw, c);
        check_len!(db, c);
        let parts = n.div_ceil(ROWS_PER_PART);
        ensure!(
            scratch.len() >= parts * 2 * c,
            "layernorm scratch too short"
        );
        if n == 0 {
            return Ok(());
        }
        let (ni, ci) = (i32_of(n, "N")?, i32_of(c, "C")?);
        let f = self.f("layernorm_backward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(dx)
            .arg(&mut *scratch)
            .arg(dy)
            .arg(x)
            .arg(w)
            .arg(mean)
            .arg(rstd);
        l.arg(&ni).arg(&ci);
        unsafe { l.launch(cfg(u32::try_from(parts)?, THREADS)) }?;
        let scratch = scratch.slice(..parts * 2 * c);
        self.column_reduce(dw, &scratch.slice(..), parts, c, 2 * c)?;
        self.column_reduce(db, &scratch.slice(c..), parts, c, 2 * c)
    }

    /// `out[j] += partials[0, j] + partials[1, j] + …` (in order) for j < width, row p of
    /// partials starting at `p·stride`. One thread per column.
    pub fn column_reduce(
        &self,
        out: &mut CudaViewMut<f32>,
        partials: &CudaView<f32>,
        num_parts: usize,
        width: usize,
        stride: usize,
    ) -> Result<()> {
        check_len!(out, width);
        ensure!(
            num_parts == 0 || partials.len() >= (num_parts - 1) * stride + width,
            "partials too short"
        );
        let pi = i32_of(num_parts, "parts")?;
        let (wi, si) = (i32_of(width, "width")?, i32_of(stride, "stride")?);
        let f = self.f("column_reduce")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(out).arg(partials).arg(&pi).arg(&wi).arg(&si);
        unsafe { l.launch(cfg(grid_for(width, THREADS)?, THREADS)) }?;
        Ok(())
    }

    /// Scratch length (f32) that [`Self::bias_grad`] needs: `ceil(N/64)·OC`.
    pub fn bias_scratch_len(n: usize, oc: usize) -> usize {
        n.div_ceil(ROWS_PER_PART) * oc
    }

    /// Bias gradient `db += Σ_rows dy`, dy `[N, OC]`: `bias_grad_partial` (grid
    /// `(ceil(OC/256), min(ceil(N/64), 65535))`, 64-row partial sums into `scratch`), then
    /// `column_reduce`. Rounds exactly like the CPU twin's `add_column_sums`.
    pub fn bias_grad(
        &self,
        db: &mut CudaViewMut<f32>,
        scratch: &mut CudaViewMut<f32>,
        dy: &CudaView<f32>,
        n: usize,
        oc: usize,
    ) -> Result<()> {
        check_len!(dy, n * oc);
        check_len!(db, oc);
        let parts = n.div_ceil(ROWS_PER_PART);
        ensure!(scratch.len() >= parts * oc, "bias scratch too short");
        if n == 0 {
            return Ok(());
        }
        let (ni, oi) = (i32_of(n, "N")?, i32_of(oc, "OC")?);
        let f = self.f("bias_grad_partial")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut *scratch).arg(dy).arg(&ni).arg(&oi);
        let mut c = cfg(grid_for(oc, THREADS)?, THREADS);
        c.grid_dim.1 = parts.min(MAX_GRID as usize) as u32;
        unsafe { l.launch(c) }?;
        self.column_reduce(db, &scratch.slice(..parts * oc), parts, oc, oc)
    }
}

/// The shape of one attention call (B, T, C, NH); hd = C / NH.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
}

impl AttnShape {
    /// Elements of one `[B, T, C]` (= one `[B, NH, T, hd]`) tensor.
    pub fn numel(&self) -> usize {
        self.b * self.t * self.c
    }

    fn ints(&self) -> Result<[i32; 4]> {
        let (c, nh) = (self.c, self.nh);
        ensure!(
            nh > 0 && c.is_multiple_of(nh),
            "C = {c} is not a multiple of NH = {nh}"
        );
        Ok([
            i32_of(self.b, "B")?,
            i32_of(self.t, "T")?,
            i32_of(self.c, "C")?,
            i32_of(self.nh, "NH")?,
        ])
    }
}

// Elementwise, attention, loss, optimizer and cast launches.
impl Kernels {
    /// `out = gelu(x)` (tanh form), shapes `[n]`. Elementwise launch.
    pub fn gelu_forward(&self, out: &mut CudaViewMut<f32>, x: &CudaView<f32>) -> Result<()> {
        check_len!(out, x.len());
        let n = x.len() as i64;
        let mut l = self.stream.launch_builder(self.f("gelu_forward")?);
        l.arg(out).arg(x).arg(&n);
        unsafe { l.launch(elementwise(x.len())) }?;
        Ok(())
    }

    /// `dx = dy · gelu'(x)` (overwrites dx), shapes `[n]`. Elementwise launch.
    pub fn gelu_backward(
        &self,
        dx: &mut CudaViewMut<f32>,
        x: &CudaView<f32>,
        dy: &CudaView<f32>,
    ) -> Result<()> {
        check_len!(dx, x.len());
        check_len!(dy, x.len());
        let n = x.len() as i64;
        let mut l = self.stream.launch_builder(self.f("gelu_backward")?);
        l.arg(dx).arg(x).arg(dy).arg(&n);
        unsafe { l.launch(elementwise(x.len())) }?;
        Ok(())
    }

    /// qkv `[B, T, 3C]` → q, k, v `[B, NH, T, hd]`. One thread per element of q.
    pub fn attn_split_qkv(
        &self,
        q: &mut CudaViewMut<f32>,
        k: &mut CudaViewMut<f32>,
        v: &mut CudaViewMut<f32>,
        qkv: &CudaView<f32>,
        d: AttnShape,
    ) -> Result<()> {
        let [bi, ti, ci, hi] = d.ints()?;
        check_len!(qkv, 3 * d.numel());
        check_len!(q, d.numel());
        check_len!(k, d.numel());
        check_len!(v, d.numel());
        let mut l = self.stream.launch_builder(self.f("attn_split_qkv")?);
        l.arg(q)
            .arg(k)
            .arg(v)
            .arg(qkv)
            .arg(&bi)
            .arg(&ti)
            .arg(&ci)
            .arg(&hi);
        unsafe { l.launch(cfg(grid_for(d.numel(), THREADS)?, THREADS)) }?;
        Ok(())
    }

    /// y `[B, NH, T, hd]` → out `[B, T, C]`. One thread per element.
    pub fn attn_merge_heads(
        &self,
        out: &mut CudaViewMut<f32>,
        y: &CudaView<f32>,
        d: AttnShape,
    ) -> Result<()> {
        self.heads_permute("attn_merge_heads", out, y, d)
    }

    /// x `[B, T, C]` → yh `[B, NH, T, hd]` (dY for the backward GEMMs). One thread per element.
    pub fn attn_split_heads(
        &self,
        yh: &mut CudaViewMut<f32>,
        x: &CudaView<f32>,
        d: AttnShape,
    ) -> Result<()> {
        self.heads_permute("attn_split_heads", yh, x, d)
    }

    fn heads_permute(
        &self,
        name: &str,
        dst: &mut CudaViewMut<f32>,
        src: &CudaView<f32>,
        d: AttnShape,
    ) -> Result<()> {
        let [bi, ti, ci, hi] = d.ints()?;
        check_len!(dst, d.numel());
        check_len!(src, d.numel());
        let mut l = self.stream.launch_builder(self.f(name)?);
        l.arg(dst).arg(src).arg(&bi).arg(&ti).arg(&ci).arg(&hi);
        unsafe { l.launch(cfg(grid_for(d.numel(), THREADS)?, THREADS)) }?;
        Ok(())
    }

    /// dq, dk, dv `[B, NH, T, hd]` → dqkv `[B, T, 3C]` (overwritten). One thread per element
    /// of dqkv.
    pub fn attn_merge_dqkv(
        &self,
        dqkv: &mut CudaViewMut<f32>,
        dq: &CudaView<f32>,
        dk: &CudaView<f32>,
        dv: &CudaView<f32>,
        d: AttnShape,
    ) -> Result<()> {
        let [bi, ti, ci, hi] = d.ints()?;
        check_len!(dqkv, 3 * d.numel());
        check_len!(dq, d.numel());
        check_len!(dk, d.numel());
        check_len!(dv, d.numel());
        let mut l = self.stream.launch_builder(self.f("attn_merge_dqkv")?);
        l.arg(dqkv)
            .arg(dq)
            .arg(dk)
            .arg(dv)
            .arg(&bi)
            .arg(&ti)
            .arg(&ci)
            .arg(&hi);
        unsafe { l.launch(cfg(grid_for(3 * d.numel(), THREADS)?, THREADS)) }?;
        Ok(())
    }

    /// In place on p `[BH, T, T]` (scores S on entry): `p[t, s] = softmax_s(scale·S[t, 0..=t])`
    /// for s ≤ t, 0 above the diagonal. One warp per row, 8 rows per block.
    pub fn causal_softmax_forward(
        &self,
        p: &mut CudaViewMut<f32>,
        bh: usize,
        t: usize,
        scale: f32,
    ) -> Result<()> {
        check_len!(p, bh * t * t);
        let (bhi, ti) = (i32_of(bh, "BH")?, i32_of(t, "T")?);
        let mut l = self
            .stream
            .launch_builder(self.f("causal_softmax_forward")?);
        l.arg(p).arg(&bhi).arg(&ti).arg(&scale);
        unsafe { l.launch(rows(bh * t)?) }?;
        Ok(())
    }

    /// In place on ds `[BH, T, T]` (dP on entry): `dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale` on
    /// s ≤ t, 0 above. One warp per row, 8 rows per block.
    pub fn causal_softmax_backward(
        &self,
        ds: &mut CudaViewMut<f32>,
        p: &CudaView<f32>,
        bh: usize,
        t: usize,
        scale: f32,
    ) -> Result<()> {
        check_len!(ds, bh * t * t);
        check_len!(p, bh * t * t);
        let (bhi, ti) = (i32_of(bh, "BH")?, i32_of(t, "T")?);
        let mut l = self
            .stream
            .launch_builder(self.f("causal_softmax_backward")?);
        l.arg(ds).arg(p).arg(&bhi).arg(&ti).arg(&scale);
        unsafe { l.launch(rows(bh * t)?) }?;
        Ok(())
    }

    /// Fused softmax + cross-entropy over logits `[N, Vp]` (V real columns), targets `[N]`:
    /// writes `losses [N]` (NaN for a target outside 0..V); with `grad_scale = Some(s)` the
    /// logits become `s·(softmax − onehot)` (0 on padded columns). One 512-thread block per row.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_xent(
        &self,
        logits: &mut CudaViewMut<f32>,
        losses: &mut CudaViewMut<f32>,
        targets: &CudaView<i32>,
        n: usize,
        vp: usize,
        v: usize,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        check_len!(logits, n * vp);
        check_len!(losses, n);
        check_len!(targets, n);
        ensure!(v > 0 && v <= vp, "V = {v} must be in 1..=Vp = {vp}");
        if n == 0 {
            return Ok(());
        }
        let (ni, vpi, vi) = (i32_of(n, "N")?, i32_of(vp, "Vp")?, i32_of(v, "V")?);
        let (s, want) = (grad_scale.unwrap_or(0.0), grad_scale.is_some() as i32);
        let mut l = self.stream.launch_builder(self.f("softmax_xent")?);
        l.arg(logits)
            .arg(losses)
            .arg(targets)
            .arg(&ni)
            .arg(&vpi)
            .arg(&vi);
        l.arg(&s).arg(&want);
        unsafe { l.launch(cfg(u32::try_from(n)?, XENT_THREADS)) }?;
        Ok(())
    }

    /// One AdamW update of p with gradient g and state m, v (all `[n]`). Elementwise launch.
    pub fn adamw(
        &self,
        p: &mut CudaViewMut<f32>,
        g: &CudaView<f32>,
        m: &mut CudaViewMut<f32>,
        v: &mut CudaViewMut<f32>,
        h: AdamStep,
    ) -> Result<()> {
        let n = p.len();
        check_len!(g, n);
        check_len!(m, n);
        check_len!(v, n);
        let ni = n as i64;
        let mut l = self.stream.launch_builder(self.f("adamw")?);
        l.arg(p)
            .arg(g)
            .arg(m)
            .arg(v)
            .arg(&ni)
            .arg(&h.lr)
            .arg(&h.beta1)
            .arg(&h.beta2);
        l.arg(&h.eps)
            .arg(&h.decay_factor)
            .arg(&h.step_size)
            .arg(&h.bc2_sqrt);
        unsafe { l.launch(elementwise(n)) }?;
        Ok(())
    }

    /// AdamW on every region of `ranges` in one launch (`adamw_multi`): regions are cut into
    /// chunks of at most [`ADAM_CHUNK`] elements, one block each; regions with decay use
    /// `h.decay_factor`, the others 1. `p, g, m, v` are whole flat buffers.
    pub fn adamw_multi(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        ranges: &[(Region, bool)],
        h: AdamStep,
    ) -> Result<()> {
        let n = p.len();
        check_len!(g, n);
        check_len!(m, n);
        check_len!(v, n);
        let table = adam_chunks(ranges, n)?;
        let blocks = u32::try_from(table.len() / 2)?;
        if blocks == 0 {
            return Ok(());
        }
        let table = self.stream.clone_htod(&table)?;
        let mut l = self.stream.launch_builder(self.f("adamw_multi")?);
        l.arg(p).arg(g).arg(m).arg(v).arg(&table);
        l.arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.eps)
            .arg(&h.decay_factor)
            .arg(&h.step_size)
            .arg(&h.bc2_sqrt);
        unsafe { l.launch(cfg(blocks, 256)) }?;
        Ok(())
    }

    /// `out[0] = Σ x²` in f64 (gradient-norm clipping): `sum_squares_partial` on a fixed grid
    /// of [`SUMSQ_PARTS`] × 256 threads into `partials [SUMSQ_PARTS]`, then `sum_squares_final`
    /// (one 256-thread block). Deterministic; rounds differently from the CPU twin's chunks.
    pub fn sum_squares(
        &self,
        out: &mut CudaViewMut<f64>,
        partials: &mut CudaViewMut<f64>,
        x: &CudaView<f32>,
    ) -> Result<()> {
        ensure!(!out.is_empty(), "out must hold one f64");
        ensure!(
            partials.len() >= SUMSQ_PARTS,
            "partials must hold {SUMSQ_PARTS} f64"
        );
        let n = x.len() as i64;
        let mut l = self.stream.launch_builder(self.f("sum_squares_partial")?);
        l.arg(x).arg(&n).arg(&mut *partials);
        unsafe { l.launch(cfg(SUMSQ_PARTS as u32, THREADS)) }?;
        let parts = SUMSQ_PARTS as i32;
        let mut l = self.stream.launch_builder(self.f("sum_squares_final")?);
        l.arg(&mut *partials).arg(&parts).arg(out);
        unsafe { l.launch(cfg(1, THREADS)) }?;
        Ok(())
    }

    /// `x *= k`. Elementwise launch.
    pub fn scale(&self, x: &mut CudaViewMut<f32>, k: f32) -> Result<()> {
        let n = x.len();
        let ni = n as i64;
        let mut l = self.stream.launch_builder(self.f("scale")?);
        l.arg(x).arg(&ni).arg(&k);
        unsafe { l.launch(elementwise(n)) }?;
        Ok(())
    }

    /// `y += x` (residual adds, gradient accumulation). Elementwise launch.
    pub fn add_inplace(&self, y: &mut CudaViewMut<f32>, x: &CudaView<f32>) -> Result<()> {
        check_len!(y, x.len());
        let n = x.len() as i64;
        let mut l = self.stream.launch_builder(self.f("add_inplace")?);
        l.arg(y).arg(x).arg(&n);
        unsafe { l.launch(elementwise(x.len())) }?;
        Ok(())
    }

    /// fp32 → bf16, round to nearest even. Elementwise launch.
    pub fn f32_to_bf16(&self, out: &mut CudaViewMut<bf16>, x: &CudaView<f32>) -> Result<()> {
        check_len!(out, x.len());
        let n = x.len() as i64;
        let mut l = self.stream.launch_builder(self.f("f32_to_bf16")?);
        l.arg(out).arg(x).arg(&n);
        unsafe { l.launch(elementwise(x.len())) }?;
        Ok(())
    }

    /// bf16 → fp32 (exact). Elementwise launch.
    pub fn bf16_to_f32(&self, out: &mut CudaViewMut<f32>, x: &CudaView<bf16>) -> Result<()> {
        check_len!(out, x.len());
        let n = x.len() as i64;
        let mut l = self.stream.launch_builder(self.f("bf16_to_f32")?);
        l.arg(out).arg(x).arg(&n);
        unsafe { l.launch(elementwise(x.len())) }?;
        Ok(())
    }
}
