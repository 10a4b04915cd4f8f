//! Predicted step time: matrix products at the machine's sustained GEMM rate, the other
//! kernels by the bytes they move at the measured rates of `[kernels]` (else the memory
//! bandwidth), communication by a latency–bandwidth model per link class, and the pipeline
//! bubble.
//!
//! Per micro-batch on stage s (N = B·T tokens, L_s layers, tensor-parallel width tp, F = 4C/tp),
//! forward and backward together:
//! - matrix products: 6·N·(L_s·(12C² + 13C) + [last]·Vp·C)/tp FLOPs at `gemm_tflops`;
//! - attention: 6·N·L_s·T·C/tp FLOPs (causal) at `kernels.attention_tflops`;
//! - GELU: 7·N·F floats per layer (forward, its recomputation in backward, backward) at
//!   `kernels.gelu_gbs`; the LM head's softmax cross-entropy (last stage): 2·N·Vp/tp floats at
//!   `kernels.xent_gbs`;
//! - LayerNorms and residual adds: 16·N·C floats per layer (+5·N·C for ln_f) at `memory_gbs`;
//! - recomputation (`train.recompute`): "selective" adds attention's forward (×4/3 of its
//!   FLOPs), "full" the blocks' whole forward (×4/3 of their products, attention and
//!   LayerNorm/residual bytes, ×9/7 of GELU's) and 2·L_s more TP all-reduces;
//! - tp (tp > 1): 4·L_s all-reduces of N·C floats (+1 on the first stage, +1 on the last),
//!   ring at the link's bus bandwidth; exposed;
//! - pp (pp > 1): an activation forward and a gradient backward, N·C floats each; exposed.
//!
//! Per step: Σ_s t_s + (M − 1)·max_s t_s over the stages' micro-batch times t_s (the pipeline
//! fill and drain plus the slowest stage's steady state; (M + pp − 1)·t for balanced stages, the
//! bubble of GPipe and 1F1B alike), then the data-parallel reduction of the stage's gradients
//! (ring all-reduce, or ZeRO-1's reduce-scatter + all-gather of the same volume), minus what
//! overlaps the last backward when `parallel.overlap_grad_reduce` (the link's `overlap`
//! fraction of up to ⅔ of a micro-batch's compute), then the tied-embedding all-reduce between the first and last stages, then the
//! optimizer: gradient norm, clipping and zeroing (4·P_s floats) and AdamW (7 floats per
//! parameter it updates: P_s, or ⌈P_s/dp⌉ with ZeRO-1) at `memory_gbs`. A group's link is
//! `intra` when all its ranks share a node (ranks fill nodes in order; TP peers are
//! consecutive), else `inter`. MFU = (6N + 6·L·T·C)·tokens/s over `peak_tflops` × ranks.

use super::machine::{Link, Machine};
use super::memory::Job;
use crate::config::{Config, Recompute};
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use crate::parallel::shard::StageLayout;
use anyhow::Result;

/// The prediction for one configuration.
#[derive(Clone, Copy, Debug)]
pub struct StepTime {
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
}

/// The link a group of ranks talks over.
fn link_of(ranks: &[usize], m: &Machine) -> Link {
    let per = m.machine.devices_per_node;
    let node = |r: &usize| r / per;
    if ranks.iter().all(|r| node(r) == node(&ranks[0])) {
        m.intra
    } else {
        m.inter
    }
}

/// Rates (per second) the model divides by.
struct Rates {
    gemm: f64,
    attention: f64,
    gelu: f64,
    xent: f64,
    memory: f64,
}

impl Rates {
    fn of(m: &Machine) -> Rates {
        let (k, mm) = (&m.kernels, &m.machine);
        Rates {
            gemm: mm.gemm_tflops * 1e12,
            attention: k.attention_tflops.unwrap_or(mm.gemm_tflops) * 1e12,
            gelu: k.gelu_gbs.unwrap_or(mm.memory_gbs) * 1e9,
            xent: k.xent_gbs.unwrap_or(mm.memory_gbs) * 1e9,
            memory: mm.memory_gbs * 1e9,
        }
    }
}

/// Seconds of stage `s`'s kernels for one micro-batch (forward and backward), and of its
/// optimizer step; see the module comment.
fn stage_compute(job: &Job, s: usize, ls: f64, local_params: f64, r: &Rates) -> (f64, f64) {
    let g = job.grid;
    let mc = job.model.with_tp_padding(g.tp);
    let (c, t, tp) = (mc.n_embd as f64, job.seq as f64, g.tp as f64);
    let n = (job.micro_batch * job.seq) as f64;
    let last = s + 1 == g.pp;
    let vp = if last { mc.padded_vocab as f64 } else { 0.0 };
    // Recomputation reruns forward work (a third of forward + backward): the attention core
    // with "selective", the whole block with "full" (its GELU twice: 2 of GELU's 7 floats).
    let (block_x, att_x, gelu_x) = match job.recompute {
        Recompute::None => (1.0, 1.0, 1.0),
        Recompute::Selective => (1.0, 4.0 / 3.0, 1.0),
        Recompute::Full => (4.0 / 3.0, 4.0 / 3.0, 9.0 / 7.0),
    };
    let gemm = 6.0 * n * (block_x * ls * (12.0 * c * c + 13.0 * c) + vp * c) / tp / r.gemm;
    let attention = att_x * 6.0 * n * ls * t * c / tp / r.attention;
    let gelu = gelu_x * 4.0 * 7.0 * n * (4.0 * c / tp) * ls / r.gelu;
    let xent = 4.0 * 2.0 * n * vp / tp / r.xent;
    let ln_f = if last { 5.0 } else { 0.0 };
    let vector = 4.0 * n * c * (16.0 * block_x * ls + ln_f) / r.memory;
    let updated = if job.zero && g.dp > 1 {
        local_params / g.dp as f64
    } else {
        local_params
    };
    let optimizer = 4.0 * (4.0 * local_params + 7.0 * updated) / r.memory;
    (gemm + attention + gelu + xent + vector, optimizer)
}

pub fn step(cfg: &Config, job: &Job, m: &Machine) -> Result<StepTime> {
    let g = job.grid;
    let mc = job.model.with_tp_padding(g.tp);
    let global = ParamLayout::new(&mc);
    let c = mc.n_embd as f64;
    let act = 4.0 * (job.micro_batch * job.seq) as f64 * c;
    let rates = Rates::of(m);
    let (tp_link, dp_link) = (link_of(&g.tp_group(0), m), link_of(&g.dp_group(0), m));
    let pp_link = link_of(&g.pp_group(0), m);
    let (mut slowest_mb, mut sum_mb, mut mb_compute) = (0.0f64, 0.0f64, 0.0f64);
    let (mut dp_s, mut optimizer) = (0.0f64, 0.0f64);
    for s in 0..g.pp {
        let ly = StageLayout::shapes(&mc, &global, g.tp, 0, g.pp, s)?;
        let (first, last) = (s == 0, s + 1 == g.pp);
        let ls = ly.layers.len() as f64;
        let (compute, opt) = stage_compute(job, s, ls, ly.total as f64, &rates);
        let per_layer = if job.recompute == Recompute::Full {
            6.0
        } else {
            4.0
        };
        let reduces = per_layer * ls + f64::from(u8::from(first)) + f64::from(u8::from(last));
        let tp_s = reduces * tp_link.all_reduce_seconds(act, g.tp);
        let pp_s = if g.pp > 1 {
            2.0 * pp_link.seconds(act, 1.0)
        } else {
            0.0
        };
        sum_mb += compute + tp_s + pp_s;
        if compute + tp_s + pp_s > slowest_mb {
            slowest_mb = compute + tp_s + pp_s;
            mb_compute = compute;
        }
        dp_s = dp_s.max(dp_link.all_reduce_seconds(4.0 * ly.total as f64, g.dp));
        optimizer = optimizer.max(opt);
    }
    let pipeline = sum_mb + (job.accum.max(1) - 1) as f64 * slowest_mb;
    let overlap = if cfg.parallel.overlap_grad_reduce {
        dp_link.overlap.unwrap_or(1.0) * dp_s.min((2.0 / 3.0) * mb_compute)
    } else {
        0.0
    };
    let emb = if g.pp > 1 {
        let vl = (mc.padded_vocab / g.tp) as f64;
        pp_link.all_reduce_seconds(4.0 * vl * c, 2)
    } else {
        0.0
    };
    let step_s = pipeline + (dp_s - overlap).max(0.0) + emb + optimizer;
    let tokens = (cfg.train.global_batch_size * job.seq) as f64;
    let tokens_per_s = tokens / step_s;
    let real = Gpt2Config::from_model_config(&cfg.model);
    let nparams = ParamLayout::new(&real).num_real_params(&real) as f64;
    let model_flops = 6.0 * nparams + 6.0 * (real.n_layer * job.seq * real.n_embd) as f64;
    let mfu = model_flops * tokens_per_s / (m.machine.peak_tflops * 1e12 * g.world() as f64);
    Ok(StepTime {
        step_s,
        tokens_per_s,
        mfu,
    })
}
