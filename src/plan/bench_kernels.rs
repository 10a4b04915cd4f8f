//! `bench-machine`'s measurements of what is not a matrix product, each with the training
//! code's own kernels on the CPU backend, on every rank at once (so shared cores and memory
//! bandwidth count), reported as the slowest rank's median:
//! - memory bandwidth: `add_inplace` (y += x) over 32 Mi floats, 3 × 4 bytes per element (a
//!   STREAM-style add, write-allocate not counted);
//! - attention: forward + backward at the model's head shapes (B, T, heads), 6·B·T²·C FLOPs
//!   (causal; `plan::time`'s count);
//! - GELU: forward twice (the backward recomputes it) + backward over N × 4C floats, 7 floats
//!   per element;
//! - softmax cross-entropy: N rows of the padded vocabulary with the gradient, 2 floats per
//!   logit;
//! - all-reduce bus bandwidth over a pair of ranks, the way the data-parallel reduction moves
//!   gradients (`Backend::start_all_reduce` / `finish_all_reduce`: host copies around
//!   `MPI_Iallreduce`), 64 MiB.

use crate::backend::cpu::bench::Shape;
use crate::backend::cpu::kernels::attention::AttnDims;
use crate::backend::cpu::Cpu;
use crate::backend::prelude::*;
use crate::backend::Region;
use crate::comm::mpi::MpiComm;
use crate::runtime::Runtime;
use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::traits::CommunicatorCollectives;
use std::time::Instant;

/// The measured rates, per rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelRates {
    pub memory_gbs: f64,
    pub attention_tflops: f64,
    pub gelu_gbs: f64,
    pub xent_gbs: f64,
}

/// The model the GEMMs and kernels are measured at: one micro-batch `[B, T]` of a GPT-2 of
/// width C with `nh` heads, `layers` layers and a padded vocabulary `vp` (real `v`).
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub layers: usize,
    pub vp: usize,
    pub v: usize,
}

impl ModelShape {
    /// GPT-2 small at B 4, T 256: the default.
    pub fn gpt2_small() -> Self {
        Self {
            b: 4,
            t: 256,
            c: 768,
            nh: 12,
            layers: 12,
            vp: 50304,
            v: 50257,
        }
    }

    /// A config's model at its micro-batch and sequence length (no TP split).
    pub fn of(cfg: &crate::config::Config) -> Self {
        let m = crate::model::gpt2::Gpt2Config::from_model_config(&cfg.model);
        Self {
            b: cfg.train.micro_batch_size,
            t: cfg.train.seq_len,
            c: m.n_embd,
            nh: m.n_head,
            layers: m.n_layer,
            vp: m.padded_vocab,
            v: m.vocab_size,
        }
    }

    /// The training step's matrix products with how often each runs per step (per layer for
    /// the blocks' four linears, once for the LM head): forward `N×out×in`, input gradient
    /// `N×in×out` (transposed weight) and weight gradient `in×out×N` (transposed input).
    pub fn gemms(&self) -> Vec<(Shape, usize)> {
        let (n, c) = (self.b * self.t, self.c);
        let sh = |m, nn, k, ta, tb| Shape {
            m,
            n: nn,
            k,
            ta,
            tb,
        };
        let mut out = Vec::new();
        for (i, o) in [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)] {
            out.push((sh(n, o, i, false, false), self.layers));
            out.push((sh(n, i, o, false, true), self.layers));
            out.push((sh(i, o, n, true, false), self.layers));
        }
        out.push((sh(n, self.vp, c, false, true), 1));
        out.push((sh(n, c, self.vp, false, false), 1));
        out.push((sh(self.vp, c, n, true, false), 1));
        out
    }
}

/// Median seconds of `reps` runs of `f` after one warm-up.
fn median_s(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

/// Rates of this rank's kernels at model shape `m` (run on every rank at the same time).
pub fn kernel_rates(threads: usize, m: &ModelShape) -> Result<KernelRates> {
    let be = Cpu::resolved(None, threads, false)?;
    let n = 32 << 20;
    let (mut y, x) = (be.upload(&vec![1.0; n])?, be.upload(&vec![0.5; n])?);
    let add = median_s(5, || be.add_inplace(&mut y, &x))?;
    drop((y, x));

    let d = AttnDims {
        b: m.b,
        t: m.t,
        c: m.c,
        nh: m.nh,
    };
    let tokens = d.b * d.t;
    let qkv = be.upload(&ramp(tokens * 3 * d.c))?;
    let mut out = be.zeros(tokens * d.c)?;
    let mut att = be.zeros(be.attention_saved_len(d))?;
    let mut dqkv = be.zeros(tokens * 3 * d.c)?;
    let dout = be.upload(&ramp(tokens * d.c))?;
    let attention = median_s(3, || {
        be.attention_forward(&mut out, &mut att, &qkv, d)?;
        be.attention_backward(&mut dqkv, &dout, &out, &qkv, &att, d)
    })?;
    drop((qkv, out, att, dqkv, dout));

    let f = tokens * 4 * m.c;
    let (gx, gdy) = (be.upload(&ramp(f))?, be.upload(&ramp(f))?);
    let (mut gy, mut gdx) = (be.zeros(f)?, be.zeros(f)?);
    let gelu = median_s(3, || {
        be.gelu_forward(&mut gy, &gx)?;
        be.gelu_forward(&mut gy, &gx)?;
        be.gelu_backward(&mut gdx, &gx, &gdy)
    })?;
    drop((gx, gdy, gy, gdx));

    let (rows, vp, v) = (tokens, m.vp, m.v);
    let logits0 = ramp(rows * vp);
    let targets = be.tokens(
        &(0..rows as u32)
            .map(|i| i * 37 % v as u32)
            .collect::<Vec<_>>(),
    )?;
    let mut losses = be.zeros(rows)?;
    let mut logits = be.upload(&logits0)?;
    let xent = median_s(3, || {
        be.softmax_xent(&mut logits, &mut losses, &targets, rows, vp, v, Some(1.0))
    })?;
    Ok(KernelRates {
        memory_gbs: 12.0 * n as f64 / add / 1e9,
        attention_tflops: 6.0 * (d.b * d.t * d.t * d.c) as f64 / attention / 1e12,
        gelu_gbs: 4.0 * 7.0 * f as f64 / gelu / 1e9,
        xent_gbs: 4.0 * 2.0 * (rows * vp) as f64 / xent / 1e9,
    })
}

/// Every field the minimum over ranks.
pub fn slowest(rt: &Runtime, k: KernelRates) -> KernelRates {
    let min = |v: f64| {
        let mut out = 0f64;
        rt.world
            .all_reduce_into(&v, &mut out, SystemOperation::min());
        out
    };
    KernelRates {
        memory_gbs: min(k.memory_gbs),
        attention_tflops: min(k.attention_tflops),
        gelu_gbs: min(k.gelu_gbs),
        xent_gbs: min(k.xent_gbs),
    }
}

/// The data-parallel reduction between two ranks.
#[derive(Clone, Copy, Debug)]
pub struct PairReduce {
    /// Bus bandwidth, GB/s.
    pub bus_gbs: f64,
    /// The fraction of the shorter of (reduction, compute) hidden when both run at once, the
    /// compute polling MPI between slices as backward's hooks do: 1 when MPI progresses on
    /// its own (or a device copies), about 0 when the rank's core must move the bytes itself.
    pub overlap: f64,
}

/// The data-parallel reduction between rank 0 and `peer`, measured on rank 0 (None
/// elsewhere). Every rank takes part in the communicator split.
pub fn all_reduce_pair(rt: &Runtime, peer: usize) -> Result<Option<PairReduce>> {
    let member = rt.rank == 0 || rt.rank == peer;
    let comm = MpiComm::split(&rt.world, if member { 0 } else { 1 + rt.rank })?;
    if !member {
        return Ok(None);
    }
    let be = Cpu::resolved(None, 1, false)?;
    let n = 16 << 20;
    let mut grads = be.upload(&vec![1.0; n])?;
    let r = Region { off: 0, len: n };
    let t = median_s(5, || {
        let st = be.start_all_reduce(&comm, &mut grads, r)?;
        be.finish_all_reduce(&mut grads, r, st)
    })?;
    // Compute as long as the reduction, in 16 slices: each rank its own count of y += x calls
    // (the shorter of the two ranks' figures bounds what was hidden).
    let (mut y, x) = (
        be.upload(&vec![1.0; 1 << 20])?,
        be.upload(&vec![0.5; 1 << 20])?,
    );
    let one = median_s(5, || be.add_inplace(&mut y, &x))?;
    let calls = ((t / one).ceil() as usize).max(16);
    let compute = median_s(3, || {
        (0..calls).try_for_each(|_| be.add_inplace(&mut y, &x))
    })?;
    let both = median_s(5, || {
        let mut st = be.start_all_reduce(&comm, &mut grads, r)?;
        for i in 0..calls {
            be.add_inplace(&mut y, &x)?;
            if i % (calls / 16) == 0 {
                if let crate::backend::Started::Host(p) = &mut st {
                    p.test()?;
                }
            }
        }
        be.finish_all_reduce(&mut grads, r, st)
    })?;
    let hidden = ((t + compute - both) / t.min(compute)).clamp(0.0, 1.0);
    // n = 2: 2(n−1)/n·bytes = bytes.
    Ok((rt.rank == 0).then(|| PairReduce {
        bus_gbs: 4.0 * n as f64 / t / 1e9,
        overlap: hidden,
    }))
}

/// Distinct, bounded values (so no kernel meets only zeros or overflows).
fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i % 251) as f32 - 125.0) / 125.0).collect()
}
