//! The CPU backend: f32, rayon-parallel, bitwise deterministic for a fixed thread count.

pub mod bench;
pub mod blas;
pub mod decode;
pub mod kernels;
pub mod math;
pub mod matmul;
pub mod simd;

/// Threads for this rank: `--threads`, else `OMP_NUM_THREADS`, else the cores this process may
/// run on. A process bound to a subset of the machine (srun `--cpus-per-task`, mpirun's default
/// binding) uses exactly its cores; an unbound one shares the machine with the other
/// `local_ranks` ranks of the job on this node.
pub fn default_threads(cli: Option<usize>, local_ranks: usize) -> usize {
    if let Some(t) = cli.filter(|&t| t > 0) {
        return t;
    }
    if let Some(t) = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    {
        if t > 0 {
            return t;
        }
    }
    // `available_parallelism` honours the affinity mask (sched_getaffinity).
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if allowed >= online_cpus() {
        (allowed / local_ranks.max(1)).max(1)
    } else {
        allowed
    }
}

/// CPUs online on this machine (`processor` lines of /proc/cpuinfo; 0 if unknown).
fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}

use super::ledger::{Ledger, MemCategory};
use super::prelude::*;
use super::profile::{HostClock, OpProfiler, Profile};
use super::{AdamStep, Region};
use crate::backend::cpu::kernels::attention::{self, AttnDims};
use crate::backend::cpu::kernels::{embedding, head, layernorm, linear, loss, mlp, vocab_parallel};
use anyhow::{ensure, Result};
use kernels::optim as adamw;
use kernels::optim as clip;
use std::sync::Arc;

/// A CPU backend buffer: a `Vec<f32>` charged to the backend's [`Ledger`] while it lives.
#[derive(Debug)]
pub struct HostBuf {
    data: Vec<f32>,
    charged: usize,
    category: MemCategory,
    ledger: Arc<Ledger>,
}

impl HostBuf {
    /// The floats, given back (the charge is released).
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }
}

impl std::ops::Deref for HostBuf {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.data
    }
}

impl std::ops::DerefMut for HostBuf {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.data
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        self.ledger.free(self.category, self.charged);
    }
}

/// The CPU backend: host buffers ([`HostBuf`]), rayon threads, a GEMM provider.
pub struct Cpu {
    /// The GEMM provider (built-in or a system BLAS) and the worker threads products may use
    /// (the process-wide rayon pool should have as many).
    pub gemm: matmul::Gemm,
    /// Per-op times (`log.profile_ops`), on the host clock.
    prof: OpProfiler<std::time::Instant>,
    /// Bytes of the buffers it has handed out, by category.
    ledger: Arc<Ledger>,
}

impl Cpu {
    /// For tests and tools: the GEMM provider the environment asks for (`FERROTRON_CPU_GEMM`,
    /// `FERROTRON_BLAS`; auto otherwise), so the test suite runs with each provider. Panics if
    /// they name a library that does not load; the commands call [`matmul::Gemm::resolve`]
    /// and report that as an error instead.
    pub fn new(threads: usize) -> Self {
        match matmul::Gemm::resolve(None, threads) {
            Ok(g) => Self::with_gemm(g),
            Err(e) => panic!("CPU GEMM provider: {e:#}"),
        }
    }

    /// The backend with the provider `choice` resolves to ([`matmul::Gemm::resolve`]); when
    /// `auto` falls back to the built-in kernels and `log` is set, says so once in the log.
    pub fn resolved(choice: Option<matmul::GemmChoice>, threads: usize, log: bool) -> Result<Self> {
        let gemm = matmul::Gemm::resolve(choice, threads)?;
        if let (true, Some(why)) = (log, &gemm.fallback) {
            log::info!("{why}");
        }
        Ok(Self::with_gemm(gemm))
    }

    /// The backend with a chosen GEMM provider (see [`matmul::Gemm::resolve`]).
    pub fn with_gemm(gemm: matmul::Gemm) -> Self {
        Self {
            gemm,
            ledger: Arc::default(),
            prof: OpProfiler::default(),
        }
    }
}

impl Cpu {
    /// Wraps `data` as a buffer charged to the current category.
    fn charge(&self, data: Vec<f32>) -> HostBuf {
        let category = self.ledger.category();
        let charged = data.len() * std::mem::size_of::<f32>();
        self.ledger.alloc(category, charged);
        HostBuf {
            data,
            charged,
            category,
            ledger: self.ledger.clone(),
        }
    }

    /// The accounting of this backend's buffers.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

/// Two disjoint mutable regions of one buffer.
/// Rows `row0 .. row0 + n` of a row-major `[·, cols]` buffer, or an error if it is too short.
fn rows_of(buf: &[f32], row0: usize, n: usize, cols: usize) -> Result<&[f32]> {
    let r = row0 * cols..(row0 + n) * cols;
    ensure!(
        r.end <= buf.len(),
        "rows {row0}..{} of a {}-float buffer with {cols} columns",
        row0 + n,
        buf.len()
    );
    Ok(&buf[r])
}

/// The first `len` floats of `buf`, or an error if it is shorter.
fn prefix_mut(buf: &mut [f32], len: usize) -> Result<&mut [f32]> {
    ensure!(
        len <= buf.len(),
        "need {len} floats, the buffer has {}",
        buf.len()
    );
    Ok(&mut buf[..len])
}

fn two_mut(buf: &mut [f32], a: Region, b: Region) -> (&mut [f32], &mut [f32]) {
    if a.off < b.off {
        assert!(a.off + a.len <= b.off, "regions overlap");
        let (lo, hi) = buf.split_at_mut(b.off);
        (&mut lo[a.range()], &mut hi[..b.len])
    } else {
        assert!(b.off + b.len <= a.off, "regions overlap");
        let (lo, hi) = buf.split_at_mut(a.off);
        (&mut hi[..a.len], &mut lo[b.range()])
    }
}

impl Memory for Cpu {
    type Buf = HostBuf;
    type Tokens = Vec<u32>;
    fn set_mem_category(&self, c: MemCategory) -> MemCategory {
        self.ledger.set_category(c)
    }
    fn mem_peak(&self) -> Option<super::ledger::MemBytes> {
        Some(self.ledger.peak())
    }
    fn buf_len(&self, buf: &HostBuf) -> usize {
        buf.len()
    }
    fn zeros(&self, n: usize) -> Result<HostBuf> {
        let _op = self.prof.span(&HostClock, "zeros");
        Ok(self.charge(vec![0.0; n]))
    }
    fn upload(&self, host: &[f32]) -> Result<HostBuf> {
        let _op = self.prof.span(&HostClock, "upload");
        Ok(self.charge(host.to_vec()))
    }
    fn download(&self, buf: &HostBuf) -> Result<Vec<f32>> {
        let _op = self.prof.span(&HostClock, "download");
        Ok(buf.to_vec())
    }
    fn tokens(&self, ids: &[u32]) -> Result<Vec<u32>> {
        let _op = self.prof.span(&HostClock, "tokens");
        Ok(ids.to_vec())
    }
    fn zero(&self, buf: &mut HostBuf) -> Result<()> {
        let _op = self.prof.span(&HostClock, "zero");
        buf.fill(0.0);
        Ok(())
    }
    fn upload_vec(&self, host: Vec<f32>) -> Result<HostBuf> {
        let _op = self.prof.span(&HostClock, "upload_vec");
        Ok(self.charge(host))
    }
    fn download_into(&self, buf: &HostBuf, out: &mut Vec<f32>) -> Result<()> {
        let _op = self.prof.span(&HostClock, "download_into");
        out.clear();
        out.extend_from_slice(buf);
        Ok(())
    }
    fn download_region(&self, buf: &HostBuf, r: Region) -> Result<Vec<f32>> {
        let _op = self.prof.span(&HostClock, "download_region");
        Ok(buf[r.range()].to_vec())
    }
    fn upload_region(&self, buf: &mut HostBuf, off: usize, host: &[f32]) -> Result<()> {
        let _op = self.prof.span(&HostClock, "upload_region");
        buf[off..off + host.len()].copy_from_slice(host);
        Ok(())
    }
    fn host_mut<'a>(&self, buf: &'a mut HostBuf) -> Option<&'a mut [f32]> {
        Some(&mut buf.data)
    }
}

impl Ops for Cpu {
    fn embedding_forward(
        &self,
        out: &mut HostBuf,
        tok: &Vec<u32>,
        p: &HostBuf,
        wte: Region,
        wpe: Region,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "embedding_forward");
        embedding::forward(out, tok, &p[wte.range()], &p[wpe.range()], t, c);
        Ok(())
    }
    fn embedding_backward(
        &self,
        g: &mut HostBuf,
        dwte: Region,
        dwpe: Region,
        dx: &HostBuf,
        tok: &Vec<u32>,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "embedding_backward");
        let (a, b) = two_mut(g, dwte, dwpe);
        embedding::backward(a, b, dx, tok, t, c);
        Ok(())
    }
    fn layernorm_forward(
        &self,
        out: &mut HostBuf,
        mean: &mut HostBuf,
        rstd: &mut HostBuf,
        x: &HostBuf,
        p: &HostBuf,
        w: Region,
        b: Region,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "layernorm_forward");
        layernorm::forward(out, mean, rstd, x, &p[w.range()], &p[b.range()]);
        Ok(())
    }
    fn layernorm_backward(
        &self,
        dx: &mut HostBuf,
        g: &mut HostBuf,
        dw: Region,
        db: Region,
        dy: &HostBuf,
        x: &HostBuf,
        p: &HostBuf,
        w: Region,
        mean: &HostBuf,
        rstd: &HostBuf,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "layernorm_backward");
        let (gw, gb) = two_mut(g, dw, db);
        layernorm::backward(dx, gw, gb, dy, x, &p[w.range()], mean, rstd);
        Ok(())
    }
    fn linear_forward(
        &self,
        out: &mut HostBuf,
        x: &HostBuf,
        p: &HostBuf,
        w: Region,
        b: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "linear_forward");
        linear::forward(out, x, &p[w.range()], &p[b.range()], n, ic, oc, &self.gemm);
        Ok(())
    }
    fn linear_backward(
        &self,
        dx: &mut HostBuf,
        g: &mut HostBuf,
        dw: Region,
        db: Region,
        dy: &HostBuf,
        x: &HostBuf,
        p: &HostBuf,
        w: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "linear_backward");
        let (gw, gb) = two_mut(g, dw, db);
        linear::backward(dx, gw, gb, dy, x, &p[w.range()], n, ic, oc, &self.gemm);
        Ok(())
    }
    fn linear_backward_dgelu(
        &self,
        dpre: &mut HostBuf,
        g: &mut HostBuf,
        dw: Region,
        db: Region,
        dy: &HostBuf,
        x: &HostBuf,
        pre: &HostBuf,
        p: &HostBuf,
        w: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        self.linear_backward(dpre, g, dw, db, dy, x, p, w, n, ic, oc)?;
        let _op = self.prof.span(&HostClock, "gelu_backward");
        mlp::gelu_backward_inplace(dpre, pre);
        Ok(())
    }
    fn attention_forward(
        &self,
        out: &mut HostBuf,
        att: &mut HostBuf,
        qkv: &HostBuf,
        d: AttnDims,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "attention_forward");
        attention::forward(out, att, qkv, d, &self.gemm);
        Ok(())
    }
    fn attention_cached(
        &self,
        out: &mut HostBuf,
        qkv: &HostBuf,
        kv: &mut HostBuf,
        d: decode::CachedDims,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "attention_cached");
        decode::attention_cached(out, qkv, kv, d);
        Ok(())
    }
    fn attention_backward(
        &self,
        dqkv: &mut HostBuf,
        dout: &HostBuf,
        _out: &HostBuf,
        qkv: &HostBuf,
        att: &HostBuf,
        d: AttnDims,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "attention_backward");
        attention::backward(dqkv, dout, qkv, att, d, &self.gemm);
        Ok(())
    }
    fn gelu_forward(&self, out: &mut HostBuf, x: &HostBuf) -> Result<()> {
        let _op = self.prof.span(&HostClock, "gelu_forward");
        mlp::gelu_forward(out, x);
        Ok(())
    }
    fn gelu_backward(&self, dx: &mut HostBuf, x: &HostBuf, dy: &HostBuf) -> Result<()> {
        let _op = self.prof.span(&HostClock, "gelu_backward");
        mlp::gelu_backward(dx, x, dy);
        Ok(())
    }
    fn add_inplace(&self, y: &mut HostBuf, x: &HostBuf) -> Result<()> {
        let _op = self.prof.span(&HostClock, "add_inplace");
        kernels::add_inplace(y, x);
        Ok(())
    }
    fn logits_forward(
        &self,
        logits: &mut HostBuf,
        xf: &HostBuf,
        row0: usize,
        p: &HostBuf,
        wte: Region,
        n: usize,
        c: usize,
        vp: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "logits_forward");
        let (rows, z) = (rows_of(xf, row0, n, c)?, prefix_mut(logits, n * vp)?);
        head::logits_forward(z, rows, &p[wte.range()], n, c, vp, &self.gemm);
        Ok(())
    }
    fn logits_backward(
        &self,
        dxf: &mut HostBuf,
        row0: usize,
        g: &mut HostBuf,
        dwte: Region,
        dlogits: &HostBuf,
        xf: &HostBuf,
        p: &HostBuf,
        wte: Region,
        n: usize,
        c: usize,
        vp: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "logits_backward");
        rows_of(dxf, row0, n, c)?;
        head::logits_backward(
            &mut dxf[row0 * c..(row0 + n) * c],
            &mut g[dwte.range()],
            rows_of(dlogits, 0, n, vp)?,
            rows_of(xf, row0, n, c)?,
            &p[wte.range()],
            n,
            c,
            vp,
            &self.gemm,
        );
        Ok(())
    }
    fn softmax_xent(
        &self,
        logits: &mut HostBuf,
        losses: &mut HostBuf,
        targets: &Vec<u32>,
        n: usize,
        vp: usize,
        v: usize,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "softmax_xent");
        ensure!(
            targets.len() == n,
            "softmax_xent: {} targets for {n} rows",
            targets.len()
        );
        let (z, l) = (prefix_mut(logits, n * vp)?, prefix_mut(losses, n)?);
        loss::softmax_xent(z, l, targets, vp, v, grad_scale);
        Ok(())
    }
    fn embedding_forward_shard(
        &self,
        out: &mut HostBuf,
        tok: &[u32],
        p: &HostBuf,
        wte: Region,
        wpe: Option<Region>,
        t: usize,
        c: usize,
        v0: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "embedding_forward_shard");
        let wpe = wpe.map(|r| &p[r.range()]);
        vocab_parallel::embedding_forward(out, tok, &p[wte.range()], wpe, t, c, v0);
        Ok(())
    }
    fn embedding_backward_shard(
        &self,
        g: &mut HostBuf,
        dwte: Region,
        dwpe: Region,
        dx: &HostBuf,
        tok: &[u32],
        t: usize,
        c: usize,
        v0: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "embedding_backward_shard");
        let (a, b) = two_mut(g, dwte, dwpe);
        embedding::backward_shard(a, b, dx, tok, t, c, v0);
        Ok(())
    }
    fn xent_partial(
        &self,
        logits: &HostBuf,
        stats: &mut HostBuf,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "xent_partial");
        let n = targets.len();
        let (z, st) = (rows_of(logits, 0, n, vl)?, prefix_mut(stats, 3 * n)?);
        vocab_parallel::xent_partial(z, st, targets, vl, v0, v);
        Ok(())
    }
    fn xent_grad(
        &self,
        logits: &mut HostBuf,
        ms: &HostBuf,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
        scale: f32,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "xent_grad");
        let n = targets.len();
        let (z, ms) = (prefix_mut(logits, n * vl)?, rows_of(ms, 0, n, 2)?);
        vocab_parallel::xent_grad(z, ms, targets, vl, v0, v, scale);
        Ok(())
    }
}

impl OptimOps for Cpu {
    fn sum(&self, x: &HostBuf) -> Result<f64> {
        let _op = self.prof.span(&HostClock, "sum");
        Ok(x.iter().map(|&v| v as f64).sum())
    }
    fn sum_squares_ranges(&self, x: &HostBuf, ranges: &[Region]) -> Result<f64> {
        let _op = self.prof.span(&HostClock, "sum_squares_ranges");
        Ok(ranges
            .iter()
            .map(|r| clip::sum_squares(&x[r.range()]))
            .sum())
    }
    fn sum_squares(&self, x: &HostBuf) -> Result<f64> {
        let _op = self.prof.span(&HostClock, "sum_squares");
        Ok(clip::sum_squares(x))
    }
    fn scale(&self, x: &mut HostBuf, k: f32) -> Result<()> {
        let _op = self.prof.span(&HostClock, "scale");
        clip::scale(x, k);
        Ok(())
    }
    fn adamw(
        &self,
        p: &mut HostBuf,
        g: &HostBuf,
        m: &mut HostBuf,
        v: &mut HostBuf,
        r: Region,
        s: AdamStep,
    ) -> Result<()> {
        let _op = self.prof.span(&HostClock, "adamw");
        adamw::update(
            &mut p[r.range()],
            &g[r.range()],
            &mut m[r.range()],
            &mut v[r.range()],
            s,
        );
        Ok(())
    }
}

impl BufComm for Cpu {
    /// Received in place (no buffer is replaced, so nothing is allocated per message).
    fn recv_buf(
        &self,
        comm: &dyn crate::comm::AsyncComm,
        buf: &mut HostBuf,
        len: usize,
        src: usize,
        tag: i32,
    ) -> Result<f64> {
        if buf.len() != len {
            *buf = self.charge(vec![0.0; len]);
        }
        comm.recv_f32(src, tag, &mut buf.data)
    }
}

impl Device for Cpu {
    fn name(&self) -> String {
        format!("cpu ({})", self.gemm.describe())
    }
    fn set_profiling(&self, on: bool) {
        self.prof.set(on);
    }
    fn take_profile(&self) -> Result<Option<Profile>> {
        self.prof.take(&HostClock)
    }
}
