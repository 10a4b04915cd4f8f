//! Analytical communication volume of one optimizer step, per group, summed over all ranks —
//! exactly what the communicators count (each rank counts the payload of every collective it
//! joins once, all-gathers by their output, and point-to-point messages both when sent and when
//! received). The metrics' measured bytes must equal these numbers; tests check it.
//!
//! With N = B·T tokens per micro-batch, a = 4·N·C bytes per activation, m micro-batches:
//! - tp (tp > 1), per micro-batch: first stage a (embedding all-reduce); each layer 4a (two
//!   all-reduces forward, two backward); last stage a (dual of the head's copy region) plus the
//!   cross-entropy all-gather 12·N·tp; with full recomputation (`train.recompute = "full"`)
//!   each layer 2a more (the rerun forward's two all-reduces).
//! - pp (pp > 1), per micro-batch: 2a per neighbouring stage (an activation and a gradient, each
//!   counted by sender and receiver).
//! - emb (pp > 1): first and last stages all-reduce their `wte` shard gradient, 4·Vl·C each.
//! - dp (dp > 1): 4·P (all-reduce of the local gradients, in buckets that partition them), or
//!   with ZeRO-1 4·P + 4·dp·⌈P/dp⌉ (bucketed reduce-scatter, then all-gather of the padded
//!   parameter buffer), P = the rank's local parameters.
//! - world: 24 per rank (one all-reduce of the loss, the squared gradient norm and the non-finite
//!   guard's sum over the gradients the norm does not count; f64).

use super::shard::StageLayout;
use super::Grid;
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use anyhow::Result;
use std::collections::BTreeMap;

/// Bytes per group of one training step, summed over all ranks (`cfg` padded for TP).
pub fn step_bytes(
    cfg: &Gpt2Config,
    g: Grid,
    b: usize,
    t: usize,
    m: usize,
    zero: bool,
    recompute: crate::config::Recompute,
) -> Result<BTreeMap<&'static str, u64>> {
    let per_layer = match recompute {
        crate::config::Recompute::Full => 6,
        _ => 4,
    };
    let global = ParamLayout::new(cfg);
    let (n, c) = (b * t, cfg.n_embd);
    let a = 4 * n * c;
    let mut out: BTreeMap<&'static str, u64> =
        ["tp", "dp", "pp", "emb", "world"].map(|k| (k, 0)).into();
    let mut add = |k: &'static str, v: usize| *out.entry(k).or_default() += v as u64;
    for s in 0..g.pp {
        let (first, last) = (s == 0, s + 1 == g.pp);
        for r in 0..g.tp {
            let ly = StageLayout::shapes(cfg, &global, g.tp, r, g.pp, s)?;
            let per_replica = |add: &mut dyn FnMut(&'static str, usize)| {
                if g.tp > 1 {
                    let mut per_mb = per_layer * a * ly.layers.len();
                    if first {
                        per_mb += a;
                    }
                    if last {
                        per_mb += a + 12 * n * g.tp;
                    }
                    add("tp", m * per_mb);
                }
                if g.pp > 1 {
                    let neighbours = usize::from(!first) + usize::from(!last);
                    add("pp", m * 2 * a * neighbours);
                    if first || last {
                        add("emb", 4 * ly.vl * c);
                    }
                }
                if g.dp > 1 {
                    let p = ly.total;
                    add(
                        "dp",
                        if zero {
                            4 * p + 4 * g.dp * p.div_ceil(g.dp)
                        } else {
                            4 * p
                        },
                    );
                }
                if g.world() > 1 {
                    add("world", 24);
                }
            };
            for _ in 0..g.dp {
                per_replica(&mut add);
            }
        }
    }
    Ok(out)
}
