//! One rank's part of the model: the layers of its pipeline stage, sharded over its TP group
//! (the GPT-2 blocks of `model::gpt2` with parallelism applied). The first stage embeds
//! tokens, the last one runs ln_f, the tied LM head and the vocab-parallel cross-entropy. It is
//! the only forward and backward: training, evaluation, generation (`generate`) and the 1-rank
//! reference of the tests ([`super::whole::Whole`]) all run it.
//!
//! Activations of one micro-batch `[B, T]` (N = B·T) live in a [`StageActs`] slot; the pipeline
//! engine keeps one slot per micro-batch in flight.

use super::shard::StageLayout;
use crate::backend::cpu::kernels::attention::AttnDims;
use crate::backend::ledger::MemCategory;
use crate::backend::prelude::*;
use crate::backend::Region;
use crate::config::Recompute;
use crate::layers::{Tp, VocabParallelCrossEntropy, VocabParallelEmbedding};
use crate::model::gpt2::block::{self, BlockActs, BlockScratch, BlockTensors};
use crate::model::gpt2::params::BlockIdx;
use crate::model::gpt2::Gpt2Config;
use anyhow::{ensure, Context, Result};

/// This rank's stage of a GPT-2 on backend `B`.
pub struct StageModel<B: Backend> {
    /// The global shape (vocabulary padded to a multiple of 64·TP).
    pub cfg: Gpt2Config,
    pub layout: StageLayout,
    pub be: B,
    /// Rows of the LM head computed at once (`train.head_chunk_rows`); 0 = automatic.
    head_chunk_rows: usize,
    /// What each block keeps for backward (`train.recompute`).
    recompute: Recompute,
}

/// Floats of the logits chunk `[R, Vl]` the LM head aims for when the row count is automatic:
/// 2²⁷ (512 MiB of f32). GPT-2's vocabulary gives R = 2668 rows instead of `[B·T, Vl]` (6.6 GB
/// at B = 32, T = 1024): 13 chunks there, each GEMM still large, and the `dwte` accumulation
/// (one read and write of `[Vl, C]` per chunk) stays small next to the logits traffic.
pub const HEAD_CHUNK_FLOATS: usize = 1 << 27;

/// Last-stage activations: ln_f and, after a training forward, the gradient of its output
/// (the LM head's backward runs inside the training forward, see [`StageModel::forward`]).
struct HeadActs<B: Backend> {
    lnf: B::Buf,      // [N, C]
    lnf_mean: B::Buf, // [N]
    lnf_rstd: B::Buf, // [N]
    dlnf: B::Buf,     // [N, C]: ∂(scale·Σ loss)/∂lnf, summed over the TP group
    /// Whether `dlnf` belongs to the last forward (a training forward).
    has_grad: bool,
}

/// The LM head's working set for one chunk of R rows, shared by all micro-batches.
struct HeadScratch<B: Backend> {
    logits: B::Buf, // [R, Vl]: the chunk's local logits, then their gradient
    losses: B::Buf, // [R] (tp = 1)
    stats: B::Buf,  // [R, 3] (tp > 1)
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

impl<B: Backend> StageActs<B> {
    /// Floats this slot keeps for backward: one micro-batch's activation memory on the stage.
    pub fn saved_floats(&self, be: &B) -> usize {
        let head = self.head.as_ref().map_or(0, |h| {
            [&h.lnf, &h.lnf_mean, &h.lnf_rstd, &h.dlnf]
                .iter()
                .map(|b| be.buf_len(b))
                .sum()
        });
        be.buf_len(&self.input) + self.blocks.iter().map(|a| a.floats(be)).sum::<usize>() + head
    }
}

/// Called during a backward as gradients become final: `ready(grads, o)` means that no later
/// step of this backward changes gradient elements `o ..` — except the tied `wte`, which is
/// final only at the end (see [`StageLayout::tail_start`]). Used to start bucketed data-parallel
/// reductions while the rest of backward runs.
pub type OnReady<'a, B> =
    dyn FnMut(&mut <B as crate::backend::Memory>::Buf, usize) -> Result<()> + 'a;

/// Scratch shared by all micro-batches of a stage.
pub struct StageScratch<B: Backend> {
    block: BlockScratch<B>,
    /// `[N, C]`: the gradient of the stage output on entry to backward (received, except on the
    /// last stage), the gradient of the stage input on exit (to send).
    pub dres: B::Buf,
    head: Option<HeadScratch<B>>,
    /// With full recomputation: the block activations each block's forward is rerun into
    /// before its backward (and the first forward runs into).
    rerun: Option<BlockActs<B>>,
}

impl<B: Backend> StageModel<B> {
    pub fn new(cfg: Gpt2Config, layout: StageLayout, be: B) -> Self {
        Self {
            cfg,
            layout,
            be,
            head_chunk_rows: 0,
            recompute: Recompute::None,
        }
    }

    /// Activation recomputation ([`Recompute`]; see [`BlockActs`]).
    pub fn with_recompute(mut self, r: Recompute) -> Self {
        self.recompute = r;
        self
    }

    /// Compute the LM head `rows` rows at a time (0 = automatic, see [`HEAD_CHUNK_FLOATS`]).
    pub fn with_head_chunk_rows(mut self, rows: usize) -> Self {
        self.head_chunk_rows = rows;
        self
    }

    /// Rows R of each LM-head chunk for micro-batches of `n` rows: `train.head_chunk_rows`, or
    /// as many as fit [`HEAD_CHUNK_FLOATS`] logits; always in 1..=n. Equal on every TP rank
    /// (Vl is), so the ranks run the same chunks and the same collectives.
    pub fn head_rows(&self, n: usize) -> usize {
        let r = match self.head_chunk_rows {
            0 => HEAD_CHUNK_FLOATS / self.layout.vl.max(1),
            r => r,
        };
        r.clamp(1, n.max(1))
    }

    pub fn is_first(&self) -> bool {
        self.layout.stage == 0
    }
    pub fn is_last(&self) -> bool {
        self.layout.stage + 1 == self.layout.pp
    }

    pub(crate) fn region(&self, i: usize) -> Region {
        let e = &self.layout.entries[i];
        Region {
            off: e.offset,
            len: e.len,
        }
    }

    pub(crate) fn block_regions(&self, b: &BlockIdx) -> BlockTensors<Region> {
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

    pub(crate) fn wte(&self) -> Result<Region> {
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
                dlnf: be.zeros(n * c)?,
                has_grad: false,
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
                .map(|_| BlockActs::new(be, b, t, c, nh, tp, self.recompute))
                .collect::<Result<_>>()?,
            head,
            tokens: vec![0; n],
            targets: vec![0; n],
        })
    }

    /// Scratch for micro-batches `[b, t]`.
    pub fn scratch(&self, b: usize, t: usize) -> Result<StageScratch<B>> {
        let (be, c, n, tp) = (&self.be, self.cfg.n_embd, b * t, self.layout.tp);
        let rows = self.head_rows(n);
        let head = if self.is_last() {
            let was = be.set_mem_category(MemCategory::Logits);
            let head = HeadScratch {
                logits: be.zeros(rows * self.layout.vl)?,
                losses: be.zeros(rows)?,
                stats: be.zeros(rows * 3)?,
            };
            be.set_mem_category(was);
            Some(head)
        } else {
            None
        };
        let att = match self.recompute {
            Recompute::Selective => be.attention_saved_len(self.dims(b, t).local(tp)),
            _ => 0,
        };
        let rerun = match self.recompute {
            Recompute::Full => Some(BlockActs::new(
                be,
                b,
                t,
                c,
                self.cfg.n_head,
                tp,
                Recompute::None,
            )?),
            _ => None,
        };
        Ok(StageScratch {
            block: BlockScratch::new(be, n, c, tp, att)?,
            dres: be.zeros(n * c)?,
            head,
            rerun,
        })
    }

    /// The stage output `[N, C]` of a forwarded slot (what goes to the next stage).
    pub fn output<'a>(&self, a: &'a StageActs<B>) -> &'a B::Buf {
        a.blocks.last().map_or(&a.input, |x| &x.out)
    }

    /// Forward of one micro-batch (tokens and targets already in `a`). The first stage embeds
    /// `a.tokens`; other stages start from `a.input`. The last stage returns the mean loss over
    /// the micro-batch's tokens; in training (`train` = the gradient buffer and the loss scale)
    /// it also runs the LM head's backward (see [`StageModel::head_forward`]). Other stages
    /// return 0 and touch no gradients.
    pub fn forward(
        &self,
        params: &B::Buf,
        a: &mut StageActs<B>,
        s: &mut StageScratch<B>,
        train: Option<(&mut B::Buf, f32)>,
        tp: &Tp,
    ) -> Result<f64> {
        let (be, ly) = (&self.be, &self.layout);
        let (b, t) = (a.b, a.t);
        if self.is_first() {
            self.embedding()?
                .forward(be, tp, &mut a.input, &a.tokens, params, t)?;
        }
        for (k, idx) in ly.blocks.iter().enumerate() {
            let (done, rest) = a.blocks.split_at_mut(k);
            let x = if k == 0 { &a.input } else { &done[k - 1].out };
            let p = self.block_regions(idx);
            let d = self.dims(b, t);
            match s.rerun.as_mut() {
                // Full recomputation: run into the shared set, keep only the output.
                Some(full) => {
                    block::forward(be, full, &mut s.block, x, params, &p, d, tp)?;
                    std::mem::swap(&mut full.out, &mut rest[0].out);
                }
                None => block::forward(be, &mut rest[0], &mut s.block, x, params, &p, d, tp)?,
            }
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
        let hs = s.head.as_mut().context("last stage without head scratch")?;
        let loss = self.head_forward(params, h, hs, &a.targets, train, tp)?;
        Ok(loss / (b * t) as f64)
    }

    /// The tied LM head and the loss of one micro-batch on `lnf [N, C]`, R rows at a time
    /// ([`StageModel::head_rows`]) so the local logits `[N, Vl]` never exist at once (the
    /// largest activation of a GPT-2 otherwise). Per chunk of rows: `logits = lnf[rows] · wte_rᵀ`
    /// (copy to TP: identity), the cross-entropy ([`StageModel::xent_chunk`]), and in training
    /// at once the head's backward on the chunk's logit gradient (the loss needs nothing else
    /// from the logits): `dlnf[rows] = dlogits · wte_r`, `dwte_r += dlogitsᵀ · lnf[rows]`.
    /// Then `dlnf` is summed over TP (the dual of the copy). Returns Σ loss over the N rows.
    fn head_forward(
        &self,
        params: &B::Buf,
        h: &mut HeadActs<B>,
        hs: &mut HeadScratch<B>,
        targets: &[u32],
        mut train: Option<(&mut B::Buf, f32)>,
        tp: &Tp,
    ) -> Result<f64> {
        let be = &self.be;
        let (n, c, vl) = (targets.len(), self.cfg.n_embd, self.layout.vl);
        let (wte, rows) = (self.wte()?, self.head_rows(n));
        let scale = train.as_ref().map(|t| t.1);
        let mut loss = 0.0;
        for r0 in (0..n).step_by(rows) {
            let y = &targets[r0..n.min(r0 + rows)];
            let k = y.len();
            be.logits_forward(&mut hs.logits, &h.lnf, r0, params, wte, k, c, vl)?;
            loss += self.xent_chunk(hs, y, scale, tp)?;
            if let Some((g, _)) = train.as_mut() {
                let (dz, x) = (&hs.logits, &h.lnf);
                be.logits_backward(&mut h.dlnf, r0, g, wte, dz, x, params, wte, k, c, vl)?;
            }
        }
        h.has_grad = train.is_some();
        if h.has_grad {
            tp.all_reduce(be, &mut h.dlnf)?;
        }
        Ok(loss)
    }

    /// Cross-entropy of the first `k = y.len()` rows of `hs.logits [R, Vl]`
    /// ([`VocabParallelCrossEntropy`]): returns Σ loss, and with `scale` turns those logits into
    /// `scale · ∂(Σ loss)/∂logits`.
    fn xent_chunk(
        &self,
        hs: &mut HeadScratch<B>,
        y: &[u32],
        scale: Option<f32>,
        tp: &Tp,
    ) -> Result<f64> {
        let xent = VocabParallelCrossEntropy {
            v0: self.layout.v0,
            vl: self.layout.vl,
            v: self.cfg.vocab_size,
        };
        let HeadScratch {
            logits,
            losses,
            stats,
        } = hs;
        xent.forward(&self.be, tp, logits, losses, stats, y, scale)
    }

    /// This stage's token and position embedding (first stage).
    fn embedding(&self) -> Result<VocabParallelEmbedding> {
        Ok(VocabParallelEmbedding {
            wte: self.wte()?,
            wpe: self.region(self.layout.wpe.context("no wpe")?),
            v0: self.layout.v0,
            c: self.cfg.n_embd,
        })
    }

    /// The last stage's logits `[S, Vp]` (full padded vocabulary, on every TP rank) for rows
    /// `rows` of a stage output `x [·, C]`: ln_f, then the tied head on this rank's vocabulary
    /// shard, gathered over TP (generation's head, and the parity tests' logits).
    pub fn logits(&self, params: &B::Buf, x: &B::Buf, rows: &[usize], tp: &Tp) -> Result<Vec<f32>> {
        let (be, ly, c) = (&self.be, &self.layout, self.cfg.n_embd);
        let mut picked = Vec::with_capacity(rows.len() * c);
        for &i in rows {
            picked.extend(be.download_region(x, Region { off: i * c, len: c })?);
        }
        let s = rows.len();
        let xs = be.upload(&picked)?;
        let (mut h, mut mean, mut rstd) = (be.zeros(s * c)?, be.zeros(s)?, be.zeros(s)?);
        let w = self.region(ly.lnf_w.context("the last stage holds ln_f")?);
        let b = self.region(ly.lnf_b.context("the last stage holds ln_f")?);
        be.layernorm_forward(&mut h, &mut mean, &mut rstd, &xs, params, w, b)?;
        let mut z = be.zeros(s * ly.vl)?;
        be.logits_forward(&mut z, &h, 0, params, self.wte()?, s, c, ly.vl)?;
        let local = be.download(&z)?;
        let all = tp.all_gather(&local)?;
        // all = [tp rank][S, Vl] → [S, tp·Vl] (rank r holds vocabulary rows r·Vl ..).
        let vp = ly.vl * tp.size;
        let mut out = vec![0.0f32; s * vp];
        for (r, block) in all.chunks(s * ly.vl).enumerate() {
            for (j, row) in block.chunks(ly.vl).enumerate() {
                out[j * vp + r * ly.vl..][..ly.vl].copy_from_slice(row);
            }
        }
        Ok(out)
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
        let (b, t) = (a.b, a.t);
        if let Some(h) = a.head.as_ref() {
            // The head itself ran in the training forward; dlnf is its output gradient.
            ensure!(
                h.has_grad,
                "backward of a micro-batch whose forward was not a training forward"
            );
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
                &h.dlnf,
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
            let saved = match s.rerun.as_mut() {
                Some(full) => {
                    // Full recomputation: the block's forward again from its kept input (its
                    // TP all-reduces included), bitwise as the first time.
                    block::forward(be, full, &mut s.block, x, params, &p, d, tp)?;
                    &*full
                }
                None => &a.blocks[k],
            };
            block::backward(
                be,
                &mut s.dres,
                grads,
                &mut s.block,
                saved,
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
            self.embedding()?
                .backward(be, tp, grads, &s.dres, &a.tokens, t)?;
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
            let params = model.be.upload(&params).unwrap();
            let mut a = model.acts(b, t).unwrap();
            a.tokens = (0..b * t).map(|i| (i * 37 % 150) as u32).collect();
            a.targets = (0..b * t).map(|i| (i * 53 % 150) as u32).collect();
            if !model.is_first() {
                *a.input = wave(b * t * c.n_embd, 13);
            }
            let tp = Tp::single();
            let mut sc = model.scratch(b, t).unwrap();
            // Start from earlier micro-batches' (nonzero) gradients.
            let mut grads = model.be.upload(&wave(ly.total, 31)).unwrap();
            let train = Some((&mut grads, 0.1));
            model.forward(&params, &mut a, &mut sc, train, &tp).unwrap();
            if !model.is_last() {
                *sc.dres = wave(b * t * c.n_embd, 29);
            }
            let mut seen: Vec<(usize, Vec<f32>)> = Vec::new();
            let mut hook = |g: &mut crate::backend::cpu::HostBuf, o: usize| {
                seen.push((o, g.to_vec()));
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
