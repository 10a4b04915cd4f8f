//! Compute backends: the focused traits ([`Memory`], [`Ops`], [`OptimOps`], [`BufComm`],
//! [`Device`]; [`Backend`] is all of them) and their implementations. `cpu` is the f32
//! reference (and fast); `cuda` runs the same ops on NVIDIA GPUs.
//!
//! The model is written once against these traits (candle style). Buffers are whole, owned
//! allocations; parameters and their gradients live in one flat buffer each and are addressed
//! by [`Region`]s (offset, length), like llm.c's pointers into one parameter block. Activations
//! are separate buffers of the documented shapes. Every op has the same math on every backend;
//! the CPU kernels in `cpu::kernels` are the twins the GPU kernels are tested against.
//!
//! The traits name no concrete MPI or CUDA type: groups are `comm::Communicator` /
//! `comm::AsyncComm` trait objects, and a backend whose device transport needs the concrete
//! communicator (the CUDA backend's NCCL and CUDA-aware MPI) asks the group for it
//! (`as_any`). A default method is the shared implementation some backend uses; a method
//! every backend implements has none.

pub mod cpu;
pub mod cuda;
pub mod ledger;
pub mod profile;
pub mod staged;

use crate::comm::link::Plan;
use crate::comm::{AsyncComm, Communicator, Pending};
use anyhow::Result;
pub use cpu::kernels::attention::AttnDims;

/// A started data-parallel reduction ([`BufComm::start_all_reduce`]).
pub enum Started {
    /// On a host copy (`MPI_Iallreduce`); the sum is written back when it completes.
    Host(Pending),
    /// Enqueued on the backend's stream (NCCL): ordered before everything enqueued later.
    Enqueued,
}

/// A contiguous range of a flat buffer (one parameter tensor, or its gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub off: usize,
    pub len: usize,
}

impl Region {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.off..self.off + self.len
    }
}

/// Scalars of one AdamW update (torch's single-tensor formulation, see `optim::adamw`).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 − lr·wd` for decayed tensors, 1 otherwise.
    pub decay_factor: f32,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f32,
    /// `sqrt(1 − β2ᵗ)`.
    pub bc2_sqrt: f32,
}

/// Buffers: allocation, host transfers, memory accounting.
pub trait Memory: Send + Sync {
    /// An owned f32 buffer.
    type Buf: Send;
    /// Token ids of one micro-batch, prepared for this backend.
    type Tokens;
    /// Charges the buffers allocated from now on to `c` (memory accounting); returns the
    /// category it replaces.
    fn set_mem_category(&self, c: ledger::MemCategory) -> ledger::MemCategory {
        c
    }
    /// The peak of this backend's accounted buffers, by category; None where the backend does
    /// not account (CUDA, for now).
    fn mem_peak(&self) -> Option<ledger::MemBytes> {
        None
    }
    /// Floats in `buf`.
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Token ids `[B·T]` (all `< Vp`).
    fn tokens(&self, ids: &[u32]) -> Result<Self::Tokens>;
    fn zero(&self, buf: &mut Self::Buf) -> Result<()>;
    /// A buffer holding `host`, taking ownership (no copy where the backend keeps host memory).
    fn upload_vec(&self, host: Vec<f32>) -> Result<Self::Buf> {
        self.upload(&host)
    }
    /// `out ← buf` in host memory, reusing `out`'s allocation where the backend can.
    fn download_into(&self, buf: &Self::Buf, out: &mut Vec<f32>) -> Result<()>;
    /// A copy of region `r` of `buf` in host memory.
    fn download_region(&self, buf: &Self::Buf, r: Region) -> Result<Vec<f32>>;
    /// `buf[off .. off + host.len()] ← host`.
    fn upload_region(&self, buf: &mut Self::Buf, off: usize, host: &[f32]) -> Result<()>;
    /// The buffer as a host slice when it lives in host memory (the CPU backend), so
    /// communication can work in place; None otherwise (callers stage through the host).
    fn host_mut<'a>(&self, _buf: &'a mut Self::Buf) -> Option<&'a mut [f32]> {
        None
    }
}

/// The compute ops GPT-2 needs. Shapes use N = B·T rows, C channels, Vp padded vocabulary.
/// Ops that produce gradients of parameters accumulate (`+=`) into regions of the flat
/// gradient buffer `g`; activation gradients are overwritten unless stated.
pub trait Ops: Memory {
    /// `out[i] = wte[tok[i]] + wpe[i mod T]`.
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        tok: &Self::Tokens,
        p: &Self::Buf,
        wte: Region,
        wpe: Region,
        t: usize,
        c: usize,
    ) -> Result<()>;
    /// `dwte[tok[i]] += dx[i]`, `dwpe[i mod T] += dx[i]`.
    fn embedding_backward(
        &self,
        g: &mut Self::Buf,
        dwte: Region,
        dwpe: Region,
        dx: &Self::Buf,
        tok: &Self::Tokens,
        t: usize,
        c: usize,
    ) -> Result<()>;
    /// LayerNorm of `x [N, C]`; saves `mean, rstd [N]`.
    fn layernorm_forward(
        &self,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        p: &Self::Buf,
        w: Region,
        b: Region,
    ) -> Result<()>;
    /// Accumulates into `dx` (the residual gradient) and into `dw`, `db`.
    fn layernorm_backward(
        &self,
        dx: &mut Self::Buf,
        g: &mut Self::Buf,
        dw: Region,
        db: Region,
        dy: &Self::Buf,
        x: &Self::Buf,
        p: &Self::Buf,
        w: Region,
        mean: &Self::Buf,
        rstd: &Self::Buf,
    ) -> Result<()>;
    /// `out[N, OC] = x[N, IC] · W[IC, OC] + b`; an empty `b` region means no bias (the
    /// row-parallel layers of tensor parallelism add their bias on one TP rank only).
    fn linear_forward(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        p: &Self::Buf,
        w: Region,
        b: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()>;
    /// `dx = dy·Wᵀ` (overwritten), `dW += xᵀ·dy`, `db += Σ_rows dy`.
    fn linear_backward(
        &self,
        dx: &mut Self::Buf,
        g: &mut Self::Buf,
        dw: Region,
        db: Region,
        dy: &Self::Buf,
        x: &Self::Buf,
        p: &Self::Buf,
        w: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()>;
    /// The MLP's `c_fc` and its activation: `pre[N, OC] = x · W + b` and `out = gelu(pre)`,
    /// both kept (`pre` for the backward). One GEMM with a GELU epilogue where the backend has
    /// one (CUDA, `train.fuse_gelu`); otherwise the two ops.
    fn linear_gelu_forward(
        &self,
        pre: &mut Self::Buf,
        out: &mut Self::Buf,
        x: &Self::Buf,
        p: &Self::Buf,
        w: Region,
        b: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        self.linear_forward(pre, x, p, w, b, n, ic, oc)?;
        self.gelu_forward(out, pre)
    }
    /// [`Ops::linear_backward`] of a layer whose input is `x = gelu(pre)` (the MLP's
    /// projection), passing the gradient on through the GELU:
    /// `dpre = (dy·Wᵀ) ⊙ gelu'(pre)` (overwritten, `[N, IC]`), `dW += xᵀ·dy`, `db += Σ_rows dy`.
    fn linear_backward_dgelu(
        &self,
        dpre: &mut Self::Buf,
        g: &mut Self::Buf,
        dw: Region,
        db: Region,
        dy: &Self::Buf,
        x: &Self::Buf,
        pre: &Self::Buf,
        p: &Self::Buf,
        w: Region,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()>;
    /// Floats attention keeps for its backward ([`Ops::attention_saved_len`]'s `att`): the
    /// probabilities `[B, NH, T, T]`, or with flash attention the row statistics `[B, NH, T]`.
    fn attention_saved_len(&self, d: AttnDims) -> usize {
        d.b * d.nh * d.t * d.t
    }
    /// Causal attention from `qkv [B, T, 3C]`: `out [B, T, C]` and what the backward needs in
    /// `att` ([`Ops::attention_saved_len`] floats).
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        att: &mut Self::Buf,
        qkv: &Self::Buf,
        d: AttnDims,
    ) -> Result<()>;
    /// `dqkv [B, T, 3C]` (overwritten) from `dout [B, T, C]`, the forward's output `out` and
    /// saved `att`.
    fn attention_backward(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        qkv: &Self::Buf,
        att: &Self::Buf,
        d: AttnDims,
    ) -> Result<()>;
    /// Generation: one sequence's new positions against its KV cache (CPU twin
    /// [`cpu::decode::attention_cached`]): appends their keys and values to `kv [2, cap, C]`
    /// and writes their attention output into `out` (rows `d.row0 ..`).
    fn attention_cached(
        &self,
        out: &mut Self::Buf,
        qkv: &Self::Buf,
        kv: &mut Self::Buf,
        d: cpu::decode::CachedDims,
    ) -> Result<()>;
    fn gelu_forward(&self, out: &mut Self::Buf, x: &Self::Buf) -> Result<()>;
    fn gelu_backward(&self, dx: &mut Self::Buf, x: &Self::Buf, dy: &Self::Buf) -> Result<()>;
    /// `y += x`.
    fn add_inplace(&self, y: &mut Self::Buf, x: &Self::Buf) -> Result<()>;
    /// `logits [n, Vp] = xf[row0 .. row0 + n] · wteᵀ` (`xf [·, C]`; `logits` holds at least
    /// `n·Vp` floats, the rest untouched). A row range lets the LM head run in chunks.
    fn logits_forward(
        &self,
        logits: &mut Self::Buf,
        xf: &Self::Buf,
        row0: usize,
        p: &Self::Buf,
        wte: Region,
        n: usize,
        c: usize,
        vp: usize,
    ) -> Result<()>;
    /// Over rows `row0 .. row0 + n` of `dxf, xf [·, C]` and the `[n, Vp]` `dlogits`:
    /// `dxf[rows] = dlogits · wte` (overwritten), `dwte += dlogitsᵀ · xf[rows]`.
    fn logits_backward(
        &self,
        dxf: &mut Self::Buf,
        row0: usize,
        g: &mut Self::Buf,
        dwte: Region,
        dlogits: &Self::Buf,
        xf: &Self::Buf,
        p: &Self::Buf,
        wte: Region,
        n: usize,
        c: usize,
        vp: usize,
    ) -> Result<()>;
    /// Per-row cross-entropy of the first `n` rows of `logits [·, Vp]` over the first `v`
    /// columns into `losses[..n]` (targets `[n]`); with `grad_scale`, those logits become
    /// `scale·(softmax − onehot)` (0 on padded columns).
    fn softmax_xent(
        &self,
        logits: &mut Self::Buf,
        losses: &mut Self::Buf,
        targets: &Self::Tokens,
        n: usize,
        vp: usize,
        v: usize,
        grad_scale: Option<f32>,
    ) -> Result<()>;
    /// Vocab-parallel embedding of one TP rank (see `layers::VocabParallelEmbedding`): `wte` is
    /// the local `[Vl, C]` block of global rows `v0 ..`; `wpe` is added only where given. Host
    /// token ids.
    fn embedding_forward_shard(
        &self,
        out: &mut Self::Buf,
        tok: &[u32],
        p: &Self::Buf,
        wte: Region,
        wpe: Option<Region>,
        t: usize,
        c: usize,
        v0: usize,
    ) -> Result<()>;
    /// Backward of [`Ops::embedding_forward_shard`]: `dwte` (local rows) and `dwpe`
    /// accumulate.
    fn embedding_backward_shard(
        &self,
        g: &mut Self::Buf,
        dwte: Region,
        dwpe: Region,
        dx: &Self::Buf,
        tok: &[u32],
        t: usize,
        c: usize,
        v0: usize,
    ) -> Result<()>;
    /// Vocab-parallel cross-entropy, step 1: per-row partials `stats [N, 3]` of the local logits
    /// `[N, Vl]` (global columns `v0 ..`, real ones `< v`), N = `targets.len()`; the buffers may
    /// be longer (rows past N untouched).
    fn xent_partial(
        &self,
        logits: &Self::Buf,
        stats: &mut Self::Buf,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
    ) -> Result<()>;
    /// Vocab-parallel cross-entropy, step 3: local logits `[N, Vl]` (N = `targets.len()`, the
    /// buffer may be longer) become `scale · (softmax − onehot)` from the combined
    /// `ms [N, 2] = (M, 1/S)`.
    fn xent_grad(
        &self,
        logits: &mut Self::Buf,
        ms: &Self::Buf,
        targets: &[u32],
        vl: usize,
        v0: usize,
        v: usize,
        scale: f32,
    ) -> Result<()>;
}

/// The optimizer's ops: reductions over gradients, scaling, AdamW.
pub trait OptimOps: Memory {
    /// Σ x (f64 on the host).
    fn sum(&self, x: &Self::Buf) -> Result<f64>;
    /// Σ x² (f64 on the host).
    fn sum_squares(&self, x: &Self::Buf) -> Result<f64>;
    /// `x *= k`.
    fn scale(&self, x: &mut Self::Buf, k: f32) -> Result<()>;
    /// One AdamW update of `p[r]` with `g[r]`, state `m[r]`, `v[r]`.
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        r: Region,
        s: AdamStep,
    ) -> Result<()>;
    /// AdamW on every region of `ranges` of the flat buffers (multi-tensor): regions flagged
    /// `true` decay with `s.decay_factor`, the others use 1. Default (the CPU twin of the
    /// multi-tensor kernel): [`OptimOps::adamw`] region by region.
    fn adamw_multi(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        ranges: &[(Region, bool)],
        s: AdamStep,
    ) -> Result<()> {
        for &(r, decay) in ranges {
            let s = if decay {
                s
            } else {
                AdamStep {
                    decay_factor: 1.0,
                    ..s
                }
            };
            self.adamw(p, g, m, v, r, s)?;
        }
        Ok(())
    }
    /// Σ x² over the given regions of `x` (f64 on the host). Default: staged through the host.
    fn sum_squares_ranges(&self, x: &Self::Buf, ranges: &[Region]) -> Result<f64> {
        let h = self.download(x)?;
        Ok(ranges
            .iter()
            .map(|r| cpu::kernels::optim::sum_squares(&h[r.range()]))
            .sum())
    }
}

/// Moving backend buffers through groups of ranks (the data-parallel, tensor-parallel and
/// pipeline transports: in place on host memory, staged through host copies, or the device's
/// own, which [`Device::connect`] attached to the group).
pub trait BufComm: Memory {
    /// `buf[r] ← Σ_group buf[r]` over `comm` (TP activations, the tied-`wte` gradient), by the
    /// group's transport. Default: in place on host memory, else staged through the host.
    fn all_reduce_region(
        &self,
        comm: &dyn Communicator,
        buf: &mut Self::Buf,
        r: Region,
    ) -> Result<()> {
        staged::all_reduce_region(self, comm, buf, r)
    }
    /// Starts `grads[r] ← Σ_group grads[r]` for one data-parallel bucket whose gradients are
    /// final; [`BufComm::finish_all_reduce`] completes it. Default: a host copy reduced
    /// non-blocking.
    fn start_all_reduce(
        &self,
        comm: &dyn AsyncComm,
        grads: &mut Self::Buf,
        r: Region,
    ) -> Result<Started> {
        staged::start_all_reduce(self, comm, grads, r)
    }
    /// Completes a reduction [`BufComm::start_all_reduce`] started on region `r` of `grads`.
    fn finish_all_reduce(&self, grads: &mut Self::Buf, r: Region, s: Started) -> Result<()> {
        staged::finish_all_reduce(self, grads, r, s)
    }
    /// Starts sending all of `buf` to rank `dest` of `comm` (pipeline messages). The buffer may
    /// be reused at once. Default: a host copy sent non-blocking.
    fn send_buf(
        &self,
        comm: &dyn AsyncComm,
        buf: &Self::Buf,
        dest: usize,
        tag: i32,
    ) -> Result<Pending> {
        staged::send_buf(self, comm, buf, dest, tag)
    }
    /// `buf ← ` the `len` floats rank `src` of `comm` sends with `tag`; returns the seconds spent
    /// waiting for the message.
    fn recv_buf(
        &self,
        comm: &dyn AsyncComm,
        buf: &mut Self::Buf,
        len: usize,
        src: usize,
        tag: i32,
    ) -> Result<f64>;
}

/// Which stream a group's device collectives run on ([`Device::connect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Ordered with the compute kernels (tensor-parallel and embedding groups).
    Compute,
    /// A stream of its own, so data-parallel reductions overlap the backward.
    Comm,
}

/// The device's life cycle, transports and profiling.
pub trait Device: Memory {
    fn name(&self) -> String;
    /// Sets `comm`'s transport to `plan`, attaching the device's own collectives (NCCL on the
    /// stream of `lane`) where the plan names them. Collective over the group. Default: host
    /// transports only.
    fn connect(&self, comm: &mut dyn Communicator, plan: Plan, _lane: Lane) -> Result<()> {
        anyhow::ensure!(
            plan.coll != crate::comm::link::Transport::Nccl,
            "NCCL needs the CUDA backend"
        );
        comm.set_plan(plan)
    }
    /// Declares `params` the weights of the work that follows, until
    /// [`Device::unpin_weights`]: one pipeline run (a training step's forwards and backwards,
    /// or a validation pass), during which they are immutably borrowed. A backend may derive
    /// what it computes with from them once per run (the CUDA backend with bf16 GEMMs rounds
    /// them to bf16 once instead of per GEMM). Default: nothing.
    fn pin_weights(&self, _params: &Self::Buf) -> Result<()> {
        Ok(())
    }
    /// Ends [`Device::pin_weights`]; anything derived from the weights is stale from here.
    fn unpin_weights(&self) {}
    /// Turns the per-op time profile on or off (`log.profile_ops`, see [`profile`]).
    fn set_profiling(&self, on: bool);
    /// Milliseconds and calls per op since the last call (waiting for the device), or None
    /// when the profile is off.
    fn take_profile(&self) -> Result<Option<profile::Profile>>;
    /// A unique id of the device this rank computes on (a GPU's UUID), to find ranks that share
    /// one; None for host memory.
    fn device_uuid(&self) -> Result<Option<[u8; 16]>> {
        Ok(None)
    }
}

/// Everything a model needs from a backend: the focused traits together.
pub trait Backend: Ops + OptimOps + BufComm + Device {}

impl<T: Ops + OptimOps + BufComm + Device> Backend for T {}

/// The backend traits, for code that calls their methods on a concrete backend.
pub mod prelude {
    pub use super::{Backend, BufComm, Device, Memory, Ops, OptimOps};
}
