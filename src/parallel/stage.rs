//! One rank's part of the model: the layers of its pipeline stage, sharded over its TP group
//! (the plain GPT-2 of `model::gpt2` with parallelism applied). The first stage embeds tokens,
//! the last one runs ln_f, the tied LM head and the vocab-parallel cross-entropy. With tp = pp = 1
//! it computes exactly what [`crate::model::gpt2::Gpt2`] does.
//!
//! Activations of one micro-batch `[B, T]` (N = B·T) live in a [`StageActs`] slot; the pipeline
//! engine keeps one slot per micro-batch in flight.

use super::shard::StageLayout;
use super::Tp;
use crate::backend::{Backend, Region};
use crate::model::gpt2::attention::AttnDims;
use crate::model::gpt2::block::{self, BlockActs, BlockScratch, BlockTensors};
use crate::model::gpt2::params::BlockIdx;
use crate::model::gpt2::{vocab_parallel, Gpt2Config};
use anyhow::{Context, Result};

/// This rank's stage of a GPT-2 on backend `B`.
pub struct StageModel<B: Backend> {
    /// The global shape (vocabulary padded to a multiple of 64·TP).
    pub cfg: Gpt2Config,
    pub layout: StageLayout,
    pub be: B,
}

/// Last-stage activations: ln_f, local logits `[N, Vl]` and the cross-entropy pieces.
struct HeadActs<B: Backend> {
    lnf: B::Buf,      // [N, C]
    lnf_mean: B::Buf, // [N]
    lnf_rstd: B::Buf, // [N]
    logits: B::Buf,   // [N, Vl]; their gradient after a training forward
    losses: B::Buf,   // [N] (tp = 1)
    stats: B::Buf,    // [N, 3] (tp > 1)
}

/// Saved activations of one micro-batch on this stage.
pub struct StageActs<B: Backend> {
    pub b: usize,
    pub t: usize,
    /// The stage input `[N, C]`: embeddings (first stage) or the received activation.
    pub input: B::Buf,
    pub blocks: Vec<BlockActs<B>>,
    head: Option<HeadActs<B>>,
    /// The micro-batch's input tokens and targets (host), kept for backward.
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
}

/// Called during a backward as gradients become final: `ready(grads, o)` means that no later
/// step of this backward changes gradient elements `o ..` — except the tied `wte`, which is
/// final only at the end (see [`StageLayout::tail_start`]). Used to start bucketed data-parallel
/// reductions while the rest of backward runs.
pub type OnReady<'a, B> = dyn FnMut(&mut <B as Backend>::Buf, usize) -> Result<()> + 'a;

/// Gradient scratch shared by all micro-batches of a stage.
pub struct StageScratch<B: Backend> {
    block: BlockScratch<B>,
    /// `[N, C]`: the gradient of the stage output on entry to backward (received, except on the
    /// last stage), the gradient of the stage input on exit (to send).
    pub dres: B::Buf,
    dlnf: B::Buf, // [N, C]
}

impl<B: Backend> StageModel<B> {
    pub fn new(cfg: Gpt2Config, layout: StageLayout, be: B) -> Self {
        Self { cfg, layout, be }
    }

    pub fn is_first(&self) -> bool {
        self.layout.stage == 0
    }
    pub fn is_last(&self) -> bool {
        self.layout.stage + 1 == self.layout.pp
    }

    fn region(&self, i: usize) -> Region {
        let e = &self.layout.entries[i];
        Region {
            off: e.offset,
            len: e.len,
        }
    }

    fn block_regions(&self, b: &BlockIdx) -> BlockTensors<Region> {
        BlockTensors::from_array(
            [
                b.ln1_w, b.ln1_b, b.qkv_w, b.qkv_b, b.proj_w, b.proj_b, b.ln2_w, b.ln2_b, b.fc_w,
                b.fc_b, b.fcproj_w, b.fcproj_b,
            ]
            .map(|i| self.region(i)),
        )
    }

    fn dims(&self, b: usize, t: usize) -> AttnDims {
        AttnDims {
            b,
            t,
            c: self.cfg.n_embd,
            nh: self.cfg.n_head,
        }
    }

    fn wte(&self) -> Result<Region> {
        let i = self
            .layout
            .wte
            .context("this stage holds no token embedding")?;
        Ok(self.region(i))
    }

    /// A slot for micro-batches `[b, t]`.
    pub fn acts(&self, b: usize, t: usize) -> Result<StageActs<B>> {
        let (be, n, c) = (&self.be, b * t, self.cfg.n_embd);
        let (nh, tp) = (self.cfg.n_head, self.layout.tp);
        let head = if self.is_last() {
            Some(HeadActs {
                lnf: be.zeros(n * c)?,
                lnf_mean: be.zeros(n)?,
                lnf_rstd: be.zeros(n)?,
                logits: be.zeros(n * self.layout.vl)?,
                losses: be.zeros(n)?,
                stats: be.zeros(n * 3)?,
            })
        } else {
            None
        };
        Ok(StageActs {
            b,
            t,
            input: be.zeros(n * c)?,
            blocks: self
                .layout
                .layers
                .clone()
                .map(|_| BlockActs::new(be, b, t, c, nh, tp))
                .collect::<Result<_>>()?,
            head,
            tokens: vec![0; n],
            targets: vec![0; n],
        })
    }

    pub fn scratch(&self, n: usize) -> Result<StageScratch<B>> {
        let (be, c) = (&self.be, self.cfg.n_embd);
        Ok(StageScratch {
            block: BlockScratch::new(be, n, c, self.layout.tp)?,
            dres: be.zeros(n * c)?,
            dlnf: be.zeros(n * c)?,
        })
    }

    /// The stage output `[N, C]` of a forwarded slot (what goes to the next stage).
    pub fn output<'a>(&self, a: &'a StageActs<B>) -> &'a B::Buf {
        a.blocks.last().map_or(&a.input, |x| &x.out)
    }

    /// Forward of one micro-batch (tokens and targets already in `a`). The first stage embeds
    /// `a.tokens`; other stages start from `a.input`. The last stage returns the mean loss over
    /// the micro-batch's tokens, and with `grad_scale` leaves `scale·∂(Σ loss)/∂logits` for
    /// backward; other stages return 0.
    pub fn forward(
        &self,
        params: &B::Buf,
        a: &mut StageActs<B>,
        grad_scale: Option<f32>,
        tp: &Tp,
    ) -> Result<f64> {
        let (be, ly) = (&self.be, &self.layout);
        let (b, t, c) = (a.b, a.t, self.cfg.n_embd);
        if self.is_first() {
            let (wte, wpe) = (self.wte()?, self.region(ly.wpe.context("no wpe")?));
            if tp.size == 1 {
                be.embedding_forward(&mut a.input, &be.tokens(&a.tokens)?, params, wte, wpe, t, c)?;
            } else {
                // Vocab-parallel lookup → reduce from TP; wpe added once (rank 0).
                let wpe = (tp.rank == 0).then_some(wpe);
                be.embedding_forward_shard(&mut a.input, &a.tokens, params, wte, wpe, t, c, ly.v0)?;
                tp.all_reduce(be, &mut a.input)?;
            }
        }
        for (k, idx) in ly.blocks.iter().enumerate() {
            let (done, rest) = a.blocks.split_at_mut(k);
            let x = if k == 0 { &a.input } else { &done[k - 1].out };
            let p = self.block_regions(idx);
            block::forward(be, &mut rest[0], x, params, &p, self.dims(b, t), tp)?;
        }
        let Some(h) = a.head.as_mut() else {
            return Ok(0.0);
        };
        let x = a.blocks.last().map_or(&a.input, |x| &x.out);
        let (w, bias) = (
            self.region(ly.lnf_w.context("no ln_f")?),
            self.region(ly.lnf_b.context("no ln_f")?),
        );
        be.layernorm_forward(
            &mut h.lnf,
            &mut h.lnf_mean,
            &mut h.lnf_rstd,
            x,
            params,
            w,
            bias,
        )?;
        // Copy to TP (identity) → local logits [N, Vl].
        let (n, vl, v) = (b * t, ly.vl, self.cfg.vocab_size);
        be.logits_forward(&mut h.logits, &h.lnf, params, self.wte()?, n, c, vl)?;
        if tp.size == 1 {
            let y = be.tokens(&a.targets)?;
            be.softmax_xent(&mut h.logits, &mut h.losses, &y, vl, v, grad_scale)?;
            return Ok(be.sum(&h.losses)? / n as f64);
        }
        // Vocab-parallel cross-entropy: partials → all-gather → combine → local gradient.
        be.xent_partial(&h.logits, &mut h.stats, &a.targets, vl, ly.v0, v)?;
        let gathered = tp.all_gather(&be.download(&h.stats)?)?;
        let (mut ms, mut losses) = (vec![0.0f32; 2 * n], vec![0.0f32; n]);
        vocab_parallel::xent_combine(&gathered, tp.size, &mut ms, &mut losses);
        if let Some(s) = grad_scale {
            let ms = be.upload(&ms)?;
            be.xent_grad(&mut h.logits, &ms, &a.targets, vl, ly.v0, v, s)?;
        }
        Ok(losses.iter().map(|&l| l as f64).sum::<f64>() / n as f64)
    }

    /// Backward of one forwarded micro-batch: parameter gradients accumulate into `grads`. On
    /// a stage other than the last, `s.dres` must hold the gradient of the stage output; on
    /// exit it holds the gradient of the stage input. `ready` is told after the head and after
    /// each block which gradients this backward no longer touches.
    pub fn backward(
        &self,
        params: &B::Buf,
        grads: &mut B::Buf,
        a: &StageActs<B>,
        s: &mut StageScratch<B>,
        tp: &Tp,
        mut ready: Option<&mut OnReady<B>>,
    ) -> Result<()> {
        let (be, ly) = (&self.be, &self.layout);
        let (b, t, c) = (a.b, a.t, self.cfg.n_embd);
        if let Some(h) = a.head.as_ref() {
            let wte = self.wte()?;
            let (n, vl) = (b * t, ly.vl);
            be.logits_backward(
                &mut s.dlnf,
                grads,
                wte,
                &h.logits,
                &h.lnf,
                params,
                wte,
                n,
                c,
                vl,
            )?;
            tp.all_reduce(be, &mut s.dlnf)?; // dual of copy to TP
            be.zero(&mut s.dres)?;
            let x = a.blocks.last().map_or(&a.input, |x| &x.out);
            let (w, bias) = (
                self.region(ly.lnf_w.context("no ln_f")?),
                self.region(ly.lnf_b.context("no ln_f")?),
            );
            be.layernorm_backward(
                &mut s.dres,
                grads,
                w,
                bias,
                &s.dlnf,
                x,
                params,
                w,
                &h.lnf_mean,
                &h.lnf_rstd,
            )?;
            if let Some(f) = ready.as_deref_mut() {
                f(grads, self.region(ly.lnf_w.context("no ln_f")?).off)?;
            }
        }
        for (k, idx) in ly.blocks.iter().enumerate().rev() {
            let x = if k == 0 {
                &a.input
            } else {
                &a.blocks[k - 1].out
            };
            let p = self.block_regions(idx);
            let d = self.dims(b, t);
            block::backward(
                be,
                &mut s.dres,
                grads,
                &mut s.block,
                &a.blocks[k],
                x,
                params,
                &p,
                d,
                tp,
            )?;
            if let Some(f) = ready.as_deref_mut() {
                f(grads, self.region(idx.ln1_w).off)?;
            }
        }
        if self.is_first() {
            let (wte, wpe) = (self.wte()?, self.region(ly.wpe.context("no wpe")?));
            if tp.size == 1 {
                let tok = be.tokens(&a.tokens)?;
                be.embedding_backward(grads, wte, wpe, &s.dres, &tok, t, c)?;
            } else {
                // Dual of reduce from TP: identity.
                be.embedding_backward_shard(grads, wte, wpe, &s.dres, &a.tokens, t, c, ly.v0)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::model::gpt2::ParamLayout;

    /// What a backward reports through `ready` is true: after `ready(g, o)`, gradient elements
    /// `o ..` no longer change (the data-parallel buckets rely on it), and the reports come at
    /// the layout's ready points in order. First, middle, last and the only stage.
    #[test]
    fn ready_reports_only_final_gradients() {
        let c = Gpt2Config::new(150, 8, 16, 4, 2);
        let global = ParamLayout::new(&c);
        let (b, t) = (2, 5);
        let wave = |n: usize, k: usize| -> Vec<f32> {
            (0..n).map(|i| ((i * k % 97) as f32 / 97.0) - 0.5).collect()
        };
        for (pp, s) in [(1, 0), (3, 0), (3, 1), (3, 2)] {
            let ly = StageLayout::new(&c, &global, 1, 0, pp, s).unwrap();
            let mut params = vec![0.0f32; ly.total];
            ly.init(&c, 7, &mut params);
            let model = StageModel::new(c, ly.clone(), Cpu::new(1));
            let mut a = model.acts(b, t).unwrap();
            a.tokens = (0..b * t).map(|i| (i * 37 % 150) as u32).collect();
            a.targets = (0..b * t).map(|i| (i * 53 % 150) as u32).collect();
            if !model.is_first() {
                a.input = wave(b * t * c.n_embd, 13);
            }
            let tp = Tp::single();
            model.forward(&params, &mut a, Some(0.1), &tp).unwrap();
            let mut sc = model.scratch(b * t).unwrap();
            if !model.is_last() {
                sc.dres = wave(b * t * c.n_embd, 29);
            }
            // Start from earlier micro-batches' (nonzero) gradients.
            let mut grads = wave(ly.total, 31);
            let mut seen: Vec<(usize, Vec<f32>)> = Vec::new();
            let mut hook = |g: &mut Vec<f32>, o: usize| {
                seen.push((o, g.clone()));
                Ok(())
            };
            model
                .backward(&params, &mut grads, &a, &mut sc, &tp, Some(&mut hook))
                .unwrap();
            let points: Vec<usize> = seen.iter().map(|x| x.0).collect();
            assert_eq!(points, ly.ready_points(), "pp={pp} stage {s}");
            for (i, (o, snap)) in seen.iter().enumerate() {
                assert!(*o >= ly.tail_start());
                let same = snap[*o..] == grads[*o..];
                assert!(
                    same,
                    "pp={pp} stage {s}: gradients after {o} changed after the report"
                );
                // Not reported late: a layer (or the embedding) before `o` was still to come.
                if i + 1 < seen.len() || model.is_first() {
                    let late = snap[..*o] == grads[..*o];
                    assert!(!late, "pp={pp} stage {s}: report at {o} came late");
                }
            }
        }
    }
}
