//! Predicted step time: compute at the machine's sustained GEMM rate, communication by a
//! latency–bandwidth model per link class, and the pipeline bubble.
//!
//! Per micro-batch on stage s (N = B·T tokens, L_s layers, tensor-parallel width tp):
//! - compute: 6·N·(L_s·(12C² + 13C) + [last]·Vp·C)/tp FLOPs for the matrix products (forward
//!   and backward), plus attention's 6·N·L_s·T·C/tp, at `gemm_tflops`;
//! - tp (tp > 1): 4·L_s all-reduces of N·C floats (+1 on the first stage, +1 on the last),
//!   ring: 2(tp−1)/tp of the bytes over the group's link, 2(tp−1) latencies each; exposed;
//! - pp (pp > 1): an activation forward and a gradient backward, N·C floats each; exposed.
//!
//! Per step: Σ_s t_s + (M − 1)·max_s t_s over the stages' micro-batch times t_s (the pipeline
//! fill and drain plus the slowest stage's steady state; (M + pp − 1)·t for balanced stages, the
//! bubble of GPipe and 1F1B alike), then the data-parallel reduction of the stage's gradients (ring all-reduce, or
//! ZeRO-1's reduce-scatter + all-gather of the same volume), minus what overlaps the last
//! backward when `parallel.overlap_grad_reduce` (up to ⅔ of a micro-batch's compute), then the
//! tied-embedding all-reduce between the first and last stages. A group's link is `intra` when
//! all its ranks share a node (ranks fill nodes in order; TP peers are consecutive), else
//! `inter`. MFU = (6N + 6·L·T·C)·tokens/s over `peak_tflops` × ranks.

use super::machine::{Link, Machine};
use super::memory::Job;
use crate::config::Config;
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

/// Ring all-reduce of `bytes` over `n` ranks.
fn all_reduce_s(bytes: f64, n: usize, l: Link) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let f = (n - 1) as f64 / n as f64;
    l.seconds(2.0 * f * bytes, 2.0 * (n - 1) as f64)
}

pub fn step(cfg: &Config, job: &Job, m: &Machine) -> Result<StepTime> {
    let g = job.grid;
    let mc = job.model.with_tp_padding(g.tp);
    let global = ParamLayout::new(&mc);
    let (c, n, t) = (
        mc.n_embd as f64,
        (job.micro_batch * job.seq) as f64,
        job.seq as f64,
    );
    let tpf = g.tp as f64;
    let rate = m.machine.gemm_tflops * 1e12;
    let (tp_link, dp_link) = (link_of(&g.tp_group(0), m), link_of(&g.dp_group(0), m));
    let pp_link = link_of(&g.pp_group(0), m);
    let mut slowest_mb = 0.0f64;
    let mut sum_mb = 0.0f64;
    let mut mb_compute = 0.0f64;
    let mut dp_s = 0.0f64;
    for s in 0..g.pp {
        let ly = StageLayout::shapes(&mc, &global, g.tp, 0, g.pp, s)?;
        let (first, last) = (s == 0, s + 1 == g.pp);
        let ls = ly.layers.len() as f64;
        let head = if last {
            mc.padded_vocab as f64 * c
        } else {
            0.0
        };
        let flops =
            6.0 * n * (ls * (12.0 * c * c + 13.0 * c) + head) / tpf + 6.0 * n * ls * t * c / tpf;
        let compute = flops / rate;
        let act = 4.0 * n * c;
        let reduces = 4.0 * ls + f64::from(u8::from(first)) + f64::from(u8::from(last));
        let tp_s = reduces * all_reduce_s(act, g.tp, tp_link);
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
        dp_s = dp_s.max(all_reduce_s(4.0 * ly.total as f64, g.dp, dp_link));
    }
    let pipeline = sum_mb + (job.accum.max(1) - 1) as f64 * slowest_mb;
    let overlap = if cfg.parallel.overlap_grad_reduce {
        (2.0 / 3.0) * mb_compute
    } else {
        0.0
    };
    let emb = if g.pp > 1 {
        let vl = (mc.padded_vocab / g.tp) as f64;
        all_reduce_s(4.0 * vl * c, 2, pp_link)
    } else {
        0.0
    };
    let step_s = pipeline + (dp_s - overlap).max(0.0) + emb;
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
