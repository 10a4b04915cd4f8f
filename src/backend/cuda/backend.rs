//! [`CudaBackend`]: the [`Backend`] ops on one NVIDIA GPU — NVRTC kernels from `kernels/` for
//! the elementwise, normalisation, softmax and optimizer ops, cuBLASLt for every GEMM.
//!
//! Buffers are `CudaSlice<f32>` on the device chosen by the node-local rank (modulo the
//! devices visible, so `CUDA_VISIBLE_DEVICES` is respected). All work goes to one stream, in
//! order; host reads (`download`, loss sums, the gradient norm) synchronise. GEMMs run in exact
//! fp32 (`COMPUTE_32F`) by default so the GPU reproduces the CPU reference closely; with
//! `train.precision = "tf32"` on tensor cores in TF32, with `"bf16"` on bf16-rounded operands
//! (fp32 accumulation and outputs). Master weights, gradients and AdamW state are always fp32.

use super::device_count;
use super::gemm::Gemm;
use super::kernels::{self, AttnShape, Kernels, SUMSQ_PARTS};
use super::matmul::op;
use crate::backend::cpu::kernels::attention::AttnDims;
use crate::backend::prelude::*;
use crate::backend::profile::{OpProfiler, Profile};
use crate::backend::{AdamStep, Lane, Region, Started};
use crate::comm::link::Plan;
use crate::comm::{AsyncComm, Communicator, Pending};
use crate::config::Precision;
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// One GPU with its stream, kernels and cuBLASLt handle.
pub struct CudaBackend {
    pub(super) precision: Precision,
    /// The bf16 copy of the weights during a pipeline run (bf16 GEMMs; `weights.rs`).
    pub(super) pinned: std::sync::Mutex<Option<super::weights::Pinned>>,
    /// Flash attention (`train.flash_attention`) where the head size allows it.
    flash: bool,
    /// GELU in the MLP's GEMM epilogues (`train.fuse_gelu`; `mlp.rs`); cleared if cuBLASLt
    /// refuses them.
    pub(super) fuse_gelu: AtomicBool,
    pub(super) stream: Arc<CudaStream>,
    /// Where the data-parallel NCCL reductions run, overlapping the backward on `stream`.
    pub(super) comm_stream: Arc<CudaStream>,
    pub(super) k: Kernels,
    pub(super) gemm: Gemm,
    device: String,
    pub(super) ctx: Arc<CudaContext>,
    /// Per-op times (`log.profile_ops`), by events on `stream`.
    pub(super) prof: OpProfiler<cudarc::driver::CudaEvent>,
}

/// Token ids of a micro-batch on the device, with the host-side grouping by id that the
/// deterministic embedding backward needs.
pub struct DevTokens {
    ids: CudaSlice<i32>,
    order: CudaSlice<i32>,
    seg_start: CudaSlice<i32>,
    seg_token: CudaSlice<i32>,
    num_segs: usize,
}

pub(super) fn shape(d: AttnDims) -> AttnShape {
    AttnShape {
        b: d.b,
        t: d.t,
        c: d.c,
        nh: d.nh,
    }
}

impl CudaBackend {
    /// Open the GPU for node-local rank `local_rank` (device `local_rank mod count`), compile
    /// (or load from the cache) the kernels for its architecture, create the cuBLASLt handle.
    pub fn new(local_rank: usize) -> Result<Self> {
        Self::with_options(local_rank, Precision::Fp32)
    }

    /// As [`CudaBackend::new`] with the GEMM precision (`train.precision`).
    pub fn with_options(local_rank: usize, precision: Precision) -> Result<Self> {
        let count = device_count()?;
        let ordinal = super::device_for_local_rank(local_rank, count);
        let ctx =
            CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
        // SAFETY: set before any allocation. Work runs on `stream`; the only other stream,
        // `comm_stream`, is ordered by explicit events (`backend::cuda::comm`) and touches
        // only the long-lived gradient buffer, so cudarc's per-buffer events (which would make
        // every gradient write wait for the whole bucket's reduction) are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let comm_stream = ctx
            .new_stream()
            .context("creating the communication stream")?;
        let arch = kernels::device_arch(&ctx)?;
        let k = Kernels::load(&ctx, stream.clone(), &arch)?;
        let mut gemm = Gemm::new(stream.clone())?;
        gemm.set_tf32(precision == Precision::Tf32);
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let device = format!("cuda:{ordinal} ({name}, {arch}, {precision:?} GEMMs)");
        Ok(Self {
            precision,
            pinned: std::sync::Mutex::new(None),
            flash: false,
            fuse_gelu: AtomicBool::new(false),
            stream,
            comm_stream,
            k,
            gemm,
            device,
            ctx,
            prof: OpProfiler::default(),
        })
    }

    /// Use the flash-attention kernels (never materialise `[T, T]` probabilities) for head
    /// sizes up to 128; larger heads keep the materialised path.
    pub fn with_flash_attention(mut self, on: bool) -> Self {
        self.flash = on;
        self
    }

    /// Flash attention on tensor cores: with bf16 GEMMs (attention then computes in bf16 as
    /// well, as PyTorch's bf16 attention does), a head size they take, and a GPU with bf16 MMA.
    fn flash_tc_for(&self, d: AttnDims) -> bool {
        self.precision == Precision::Bf16
            && super::flash::supports_tc(d.c / d.nh)
            && self.k.has("flash_tc_forward")
    }

    fn flash_for(&self, d: AttnDims) -> bool {
        self.flash && super::flash::supports(d.c / d.nh)
    }

    pub(super) fn scratch(&self, n: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(n.max(1))?)
    }

    /// Runs `f` on two disjoint mutable regions of one buffer.
    fn two_mut<R>(
        g: &mut CudaSlice<f32>,
        a: Region,
        b: Region,
        f: impl FnOnce(&mut CudaViewMut<f32>, &mut CudaViewMut<f32>) -> Result<R>,
    ) -> Result<R> {
        ensure!(
            a.off + a.len <= b.off || b.off + b.len <= a.off,
            "regions overlap"
        );
        if a.off < b.off {
            let (mut lo, mut hi) = g.split_at_mut(b.off);
            let (mut va, mut vb) = (lo.slice_mut(a.range()), hi.slice_mut(0..b.len));
            f(&mut va, &mut vb)
        } else {
            let (mut lo, mut hi) = g.split_at_mut(a.off);
            let (mut va, mut vb) = (hi.slice_mut(0..a.len), lo.slice_mut(b.range()));
            f(&mut va, &mut vb)
        }
    }
}

impl CudaBackend {
    /// Q, K, V of `qkv [B, T, 3C]` as three `[B, NH, T, hd]` buffers.
    pub(super) fn split_qkv(
        &self,
        qkv: &CudaSlice<f32>,
        d: AttnDims,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        let n = d.b * d.t * d.c;
        let (mut q, mut k, mut v) = (self.scratch(n)?, self.scratch(n)?, self.scratch(n)?);
        self.k.attn_split_qkv(
            &mut q.as_view_mut(),
            &mut k.as_view_mut(),
            &mut v.as_view_mut(),
            &qkv.as_view(),
            shape(d),
        )?;
        Ok((q, k, v))
    }
}

/// `len` floats of `buf` from `off`, or an error naming the shortfall.
fn sub(buf: &CudaSlice<f32>, off: usize, len: usize) -> Result<CudaView<'_, f32>> {
    ensure!(
        off + len <= buf.len(),
        "floats {off}..{} of a {}-float buffer",
        off + len,
        buf.len()
    );
    Ok(buf.slice(off..off + len))
}

/// Mutable [`sub`].
fn sub_mut(buf: &mut CudaSlice<f32>, off: usize, len: usize) -> Result<CudaViewMut<'_, f32>> {
    ensure!(
        off + len <= buf.len(),
        "floats {off}..{} of a {}-float buffer",
        off + len,
        buf.len()
    );
    Ok(buf.slice_mut(off..off + len))
}

/// Positions grouped by token id (stable), as segments of equal ids.
pub(super) fn segments(ids: &[u32]) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i]);
    let (mut start, mut token) = (Vec::new(), Vec::new());
    for (k, &i) in order.iter().enumerate() {
        if k == 0 || ids[order[k - 1]] != ids[i] {
            start.push(k as i32);
            token.push(ids[i] as i32);
        }
    }
    start.push(ids.len() as i32);
    (order.iter().map(|&i| i as i32).collect(), start, token)
}

impl Memory for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Tokens = DevTokens;
    fn buf_len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        let _op = self.prof.span(&*self.stream, "zeros");
        self.scratch(n)
    }
    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        let _op = self.prof.span(&*self.stream, "upload");
        Ok(self.stream.clone_htod(host)?)
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let _op = self.prof.span(&*self.stream, "download");
        Ok(self.stream.clone_dtoh(buf)?)
    }
    fn download_into(&self, buf: &CudaSlice<f32>, out: &mut Vec<f32>) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "download_into");
        out.resize(buf.len(), 0.0);
        self.stream.memcpy_dtoh(buf, out.as_mut_slice())?;
        Ok(())
    }
    fn download_region(&self, buf: &CudaSlice<f32>, r: Region) -> Result<Vec<f32>> {
        let _op = self.prof.span(&*self.stream, "download_region");
        Ok(self.stream.clone_dtoh(&buf.slice(r.range()))?)
    }
    fn upload_region(&self, buf: &mut CudaSlice<f32>, off: usize, host: &[f32]) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "upload_region");
        let mut dst = buf.slice_mut(off..off + host.len());
        self.stream.memcpy_htod(host, &mut dst)?;
        Ok(())
    }
    fn tokens(&self, ids: &[u32]) -> Result<DevTokens> {
        let _op = self.prof.span(&*self.stream, "tokens");
        let as_i32: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
        let (order, start, token) = segments(ids);
        let s = &self.stream;
        Ok(DevTokens {
            ids: s.clone_htod(&as_i32)?,
            order: s.clone_htod(&order)?,
            seg_start: s.clone_htod(&start)?,
            num_segs: token.len(),
            seg_token: s.clone_htod(&token)?,
        })
    }
    fn zero(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "zero");
        Ok(self.stream.memset_zeros(buf)?)
    }
}

impl Ops for CudaBackend {
    fn embedding_forward_shard(
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
        let _op = self.prof.span(&*self.stream, "embedding_forward_shard");
        self.vp_embedding_forward(out, tok, p, wte, wpe, t, c, v0)
    }
    fn embedding_backward_shard(
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
        let _op = self.prof.span(&*self.stream, "embedding_backward_shard");
        self.vp_embedding_backward(g, dwte, dwpe, dx, tok, t, c, v0)
    }
    fn xent_partial(
        &self,
        logits: &CudaSlice<f32>,
        stats: &mut CudaSlice<f32>,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "xent_partial");
        self.vp_xent_partial(logits, stats, targets, vl, v0, v)
    }
    fn xent_grad(
        &self,
        logits: &mut CudaSlice<f32>,
        ms: &CudaSlice<f32>,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
        scale: f32,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "xent_grad");
        self.vp_xent_grad(logits, ms, targets, vl, v0, v, scale)
    }
    fn embedding_forward(
        &self,
        out: &mut CudaSlice<f32>,
        tok: &DevTokens,
        p: &CudaSlice<f32>,
        wte: Region,
        wpe: Region,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "embedding_forward");
        let n = tok.ids.len();
        self.k.embedding_forward(
            &mut out.as_view_mut(),
            &tok.ids.as_view(),
            &p.slice(wte.range()),
            &p.slice(wpe.range()),
            n,
            t,
            c,
        )
    }
    fn embedding_backward(
        &self,
        g: &mut CudaSlice<f32>,
        dwte: Region,
        dwpe: Region,
        dx: &CudaSlice<f32>,
        tok: &DevTokens,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "embedding_backward");
        let b = tok.ids.len() / t;
        self.k
            .embedding_backward_wpe(&mut g.slice_mut(dwpe.range()), &dx.as_view(), b, t, c)?;
        self.k.embedding_backward_wte(
            &mut g.slice_mut(dwte.range()),
            &dx.as_view(),
            &tok.order.as_view(),
            &tok.seg_start.as_view(),
            &tok.seg_token.as_view(),
            tok.num_segs,
            c,
        )
    }
    fn layernorm_forward(
        &self,
        out: &mut CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        w: Region,
        b: Region,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "layernorm_forward");
        let (n, c) = (mean.len(), w.len);
        self.k.layernorm_forward(
            &mut out.as_view_mut(),
            &mut mean.as_view_mut(),
            &mut rstd.as_view_mut(),
            &x.as_view(),
            &p.slice(w.range()),
            &p.slice(b.range()),
            n,
            c,
        )
    }
    fn layernorm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dw: Region,
        db: Region,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        w: Region,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "layernorm_backward");
        let (n, c) = (mean.len(), w.len);
        let mut scratch = self.scratch(Kernels::layernorm_scratch_len(n, c))?;
        let wv = p.slice(w.range());
        Self::two_mut(g, dw, db, |gw, gb| {
            self.k.layernorm_backward(
                &mut dx.as_view_mut(),
                gw,
                gb,
                &mut scratch.as_view_mut(),
                &dy.as_view(),
                &x.as_view(),
                &wv,
                &mean.as_view(),
                &rstd.as_view(),
                n,
                c,
            )
        })
    }
    fn linear_forward(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        w: Region,
        b: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "linear_forward");
        let bias = p.slice(b.range());
        self.mm(
            out,
            oc,
            op(x.as_view(), n, ic),
            op(p.slice(w.range()), ic, oc),
            false,
            None,
            (b.len > 0).then_some(&bias),
        )
    }
    fn linear_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dw: Region,
        db: Region,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        w: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "linear_backward");
        let dy16 = self.round_shared(&dy.as_view())?;
        self.mm(
            dx,
            ic,
            op(dy.as_view(), n, oc).rounded(dy16.as_ref()),
            op(p.slice(w.range()), ic, oc).t(),
            false,
            None,
            None,
        )?;
        self.weight_grads(g, dw, db, dy, dy16.as_ref(), x, n, ic, oc)
    }
    fn linear_gelu_forward(
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
        self.fc_gelu_forward(pre, out, x, p, w, b, n, ic, oc)
    }
    fn linear_backward_dgelu(
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
        self.proj_backward_dgelu(dpre, g, dw, db, dy, x, pre, p, w, n, ic, oc)
    }
    fn attention_saved_len(&self, d: AttnDims) -> usize {
        if self.flash_for(d) {
            d.b * d.nh * d.t
        } else {
            d.b * d.nh * d.t * d.t
        }
    }
    fn attention_cached(
        &self,
        out: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        kv: &mut CudaSlice<f32>,
        d: crate::backend::cpu::decode::CachedDims,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "attention_cached");
        self.decode_attention(out, qkv, kv, d)
    }
    fn attention_forward(
        &self,
        out: &mut CudaSlice<f32>,
        att: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        d: AttnDims,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "attention_forward");
        if self.flash_for(d) {
            return self
                .k
                .flash_forward(out, att, qkv, shape(d), self.flash_tc_for(d));
        }
        self.attention_forward_materialised(out, att, qkv, d)
    }
    fn attention_backward(
        &self,
        dqkv: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        out: &CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        att: &CudaSlice<f32>,
        d: AttnDims,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "attention_backward");
        if self.flash_for(d) {
            let mut dd = self.scratch(d.b * d.nh * d.t)?;
            return self.k.flash_backward(
                dqkv,
                &mut dd,
                dout,
                out,
                qkv,
                att,
                shape(d),
                self.flash_tc_for(d),
            );
        }
        self.attention_backward_materialised(dqkv, dout, qkv, att, d)
    }
    fn gelu_forward(&self, out: &mut CudaSlice<f32>, x: &CudaSlice<f32>) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "gelu_forward");
        self.k.gelu_forward(&mut out.as_view_mut(), &x.as_view())
    }
    fn gelu_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "gelu_backward");
        self.k
            .gelu_backward(&mut dx.as_view_mut(), &x.as_view(), &dy.as_view())
    }
    fn add_inplace(&self, y: &mut CudaSlice<f32>, x: &CudaSlice<f32>) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "add_inplace");
        self.k.add_inplace(&mut y.as_view_mut(), &x.as_view())
    }
    fn logits_forward(
        &self,
        logits: &mut CudaSlice<f32>,
        xf: &CudaSlice<f32>,
        row0: usize,
        p: &CudaSlice<f32>,
        wte: Region,
        n: usize,
        c: usize,
        vp: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "logits_forward");
        self.mm(
            &mut sub_mut(logits, 0, n * vp)?,
            vp,
            op(sub(xf, row0 * c, n * c)?, n, c),
            op(p.slice(wte.range()), vp, c).t(),
            false,
            None,
            None,
        )
    }
    fn logits_backward(
        &self,
        dxf: &mut CudaSlice<f32>,
        row0: usize,
        g: &mut CudaSlice<f32>,
        dwte: Region,
        dlogits: &CudaSlice<f32>,
        xf: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        wte: Region,
        n: usize,
        c: usize,
        vp: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "logits_backward");
        let dl16 = self.round_shared(&sub(dlogits, 0, n * vp)?)?;
        self.mm(
            &mut sub_mut(dxf, row0 * c, n * c)?,
            c,
            op(sub(dlogits, 0, n * vp)?, n, vp).rounded(dl16.as_ref()),
            op(p.slice(wte.range()), vp, c),
            false,
            None,
            None,
        )?;
        self.mm(
            &mut g.slice_mut(dwte.range()),
            c,
            op(sub(dlogits, 0, n * vp)?, n, vp)
                .rounded(dl16.as_ref())
                .t(),
            op(sub(xf, row0 * c, n * c)?, n, c),
            true,
            None,
            None,
        )
    }
    fn softmax_xent(
        &self,
        logits: &mut CudaSlice<f32>,
        losses: &mut CudaSlice<f32>,
        targets: &DevTokens,
        n: usize,
        vp: usize,
        v: usize,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "softmax_xent");
        self.k.softmax_xent(
            &mut sub_mut(logits, 0, n * vp)?,
            &mut sub_mut(losses, 0, n)?,
            &targets.ids.as_view(),
            n,
            vp,
            v,
            grad_scale,
        )
    }
}

impl OptimOps for CudaBackend {
    fn sum(&self, x: &CudaSlice<f32>) -> Result<f64> {
        let _op = self.prof.span(&*self.stream, "sum");
        Ok(self.download(x)?.iter().map(|&v| v as f64).sum())
    }
    fn sum_squares(&self, x: &CudaSlice<f32>) -> Result<f64> {
        let _op = self.prof.span(&*self.stream, "sum_squares");
        let mut out = self.stream.alloc_zeros::<f64>(1)?;
        let mut parts = self.stream.alloc_zeros::<f64>(SUMSQ_PARTS)?;
        self.k.sum_squares(
            &mut out.as_view_mut(),
            &mut parts.as_view_mut(),
            &x.as_view(),
        )?;
        Ok(self.stream.clone_dtoh(&out)?[0])
    }
    fn scale(&self, x: &mut CudaSlice<f32>, k: f32) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "scale");
        if k == 1.0 {
            return Ok(());
        }
        self.k.scale(&mut x.as_view_mut(), k)
    }
    fn adamw_multi(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        ranges: &[(Region, bool)],
        s: AdamStep,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "adamw_multi");
        self.k.adamw_multi(p, g, m, v, ranges, s)
    }
    fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        r: Region,
        s: AdamStep,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "adamw");
        self.k.adamw(
            &mut p.slice_mut(r.range()),
            &g.slice(r.range()),
            &mut m.slice_mut(r.range()),
            &mut v.slice_mut(r.range()),
            s,
        )
    }
}

impl BufComm for CudaBackend {
    fn all_reduce_region(
        &self,
        comm: &dyn Communicator,
        buf: &mut CudaSlice<f32>,
        r: Region,
    ) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "all_reduce_region");
        self.comm_all_reduce(comm, buf, r)
    }
    fn start_all_reduce(
        &self,
        comm: &dyn AsyncComm,
        grads: &mut CudaSlice<f32>,
        r: Region,
    ) -> Result<Started> {
        let _op = self.prof.span(&*self.stream, "start_all_reduce");
        self.comm_start_all_reduce(comm, grads, r)
    }
    fn send_buf(
        &self,
        comm: &dyn AsyncComm,
        buf: &CudaSlice<f32>,
        dest: usize,
        tag: i32,
    ) -> Result<Pending> {
        let _op = self.prof.span(&*self.stream, "send_buf");
        self.comm_send(comm, buf, dest, tag)
    }
    fn recv_buf(
        &self,
        comm: &dyn AsyncComm,
        buf: &mut CudaSlice<f32>,
        len: usize,
        src: usize,
        tag: i32,
    ) -> Result<f64> {
        let _op = self.prof.span(&*self.stream, "recv_buf");
        self.comm_recv(comm, buf, len, src, tag)
    }
    fn finish_all_reduce(&self, grads: &mut CudaSlice<f32>, r: Region, s: Started) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "finish_all_reduce");
        self.comm_finish_all_reduce(grads, r, s)
    }
}

impl Device for CudaBackend {
    fn name(&self) -> String {
        let mut s = self.device.clone();
        if self.flash {
            s += ", flash attention";
        }
        if self.fused_gelu_active() {
            s += ", GELU epilogues";
        }
        s
    }
    fn connect(&self, comm: &mut dyn Communicator, plan: Plan, lane: Lane) -> Result<()> {
        self.comm_connect(comm, plan, lane)
    }
    fn set_profiling(&self, on: bool) {
        self.prof.set(on);
    }
    fn take_profile(&self) -> Result<Option<Profile>> {
        self.prof.take(&*self.stream)
    }
    fn device_uuid(&self) -> Result<Option<[u8; 16]>> {
        self.uuid().map(Some)
    }
    fn pin_weights(&self, params: &CudaSlice<f32>) -> Result<()> {
        let _op = self.prof.span(&*self.stream, "pin_weights");
        self.pin(params)
    }
    fn unpin_weights(&self) {
        self.unpin()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_group_equal_ids_in_order() {
        let (order, start, token) = super::segments(&[5, 1, 5, 3, 1]);
        assert_eq!(order, vec![1, 4, 3, 0, 2]);
        assert_eq!(start, vec![0, 2, 3, 5]);
        assert_eq!(token, vec![1, 3, 5]);
    }
}
