//! The whole GPT-2: embedding → L blocks → ln_f → tied LM head → cross-entropy, on any
//! [`Backend`].
//!
//! `forward` keeps every activation needed by `backward` in [`Activations`] (sized for one
//! micro-batch `[B, T]`); `backward` accumulates parameter gradients into a flat buffer with
//! the same layout as the parameters, so gradient accumulation over micro-batches is free.

use super::block::{self, BlockActs, BlockScratch, BlockTensors};
use super::params::{BlockIdx, ParamLayout};
use super::Gpt2Config;
use crate::backend::cpu::Cpu;
use crate::backend::AttnDims;
use crate::backend::{Backend, Region};
use crate::layers::Tp;
use anyhow::{ensure, Result};

/// A GPT-2 of a given shape on backend `B` (the CPU backend by default).
#[derive(Debug, Clone)]
pub struct Gpt2<B: Backend = Cpu> {
    pub cfg: Gpt2Config,
    pub layout: ParamLayout,
    pub be: B,
}

/// Saved activations of one micro-batch `[B, T]`. N = B·T.
pub struct Activations<B: Backend = Cpu> {
    pub b: usize,
    pub t: usize,
    pub encoded: B::Buf, // [N, C]
    pub blocks: Vec<BlockActs<B>>,
    pub lnf: B::Buf,      // [N, C]
    pub lnf_mean: B::Buf, // [N]
    pub lnf_rstd: B::Buf, // [N]
    /// `[N, Vp]`: logits after forward; their gradient after a training forward.
    pub logits: B::Buf,
    pub losses: B::Buf, // [N]
    scratch: BlockScratch<B>,
    dres: B::Buf, // [N, C]
    dlnf: B::Buf, // [N, C]
}

impl<B: Backend> Activations<B> {
    pub fn new(be: &B, cfg: &Gpt2Config, b: usize, t: usize) -> Result<Self> {
        let (n, c) = (b * t, cfg.n_embd);
        Ok(Self {
            b,
            t,
            encoded: be.zeros(n * c)?,
            blocks: (0..cfg.n_layer)
                .map(|_| BlockActs::new(be, b, t, c, cfg.n_head, 1, crate::config::Recompute::None))
                .collect::<Result<_>>()?,
            lnf: be.zeros(n * c)?,
            lnf_mean: be.zeros(n)?,
            lnf_rstd: be.zeros(n)?,
            logits: be.zeros(n * cfg.padded_vocab)?,
            losses: be.zeros(n)?,
            scratch: BlockScratch::new(be, n, c, 1, 0)?,
            dres: be.zeros(n * c)?,
            dlnf: be.zeros(n * c)?,
        })
    }
}

impl BlockIdx {
    fn array(&self) -> [usize; 12] {
        [
            self.ln1_w,
            self.ln1_b,
            self.qkv_w,
            self.qkv_b,
            self.proj_w,
            self.proj_b,
            self.ln2_w,
            self.ln2_b,
            self.fc_w,
            self.fc_b,
            self.fcproj_w,
            self.fcproj_b,
        ]
    }
}

impl Gpt2<Cpu> {
    /// A model on the CPU backend with `threads` GEMM threads.
    pub fn new(cfg: Gpt2Config, threads: usize) -> Self {
        Self::with_backend(cfg, Cpu::new(threads))
    }
}

impl<B: Backend> Gpt2<B> {
    pub fn with_backend(cfg: Gpt2Config, be: B) -> Self {
        Self {
            layout: ParamLayout::new(&cfg),
            cfg,
            be,
        }
    }

    fn dims(&self, b: usize, t: usize) -> AttnDims {
        AttnDims {
            b,
            t,
            c: self.cfg.n_embd,
            nh: self.cfg.n_head,
        }
    }

    /// The region of parameter `i` in the flat buffers.
    pub fn region(&self, i: usize) -> Region {
        let e = &self.layout.entries[i];
        Region {
            off: e.offset,
            len: e.len,
        }
    }

    fn block_regions(&self, l: usize) -> BlockTensors<Region> {
        BlockTensors::from_array(self.layout.blocks[l].array().map(|i| self.region(i)))
    }

    /// Activations for micro-batches of `[b, t]`.
    pub fn activations(&self, b: usize, t: usize) -> Result<Activations<B>> {
        Activations::new(&self.be, &self.cfg, b, t)
    }

    /// Forward pass over `tokens [B, T]`. With `targets`, computes per-token losses and returns
    /// their mean; with `grad_scale`, also leaves `scale · ∂(Σ loss)/∂logits` in `acts.logits`
    /// for [`Gpt2::backward`]. Without targets, `acts.logits` holds the logits and 0 is returned.
    pub fn forward(
        &self,
        params: &B::Buf,
        tokens: &B::Tokens,
        targets: Option<&B::Tokens>,
        grad_scale: Option<f32>,
        acts: &mut Activations<B>,
    ) -> Result<f32> {
        let (b, t, c, vp) = (acts.b, acts.t, self.cfg.n_embd, self.cfg.padded_vocab);
        let (be, ly) = (&self.be, &self.layout);
        let wte = self.region(ly.wte);
        be.embedding_forward(
            &mut acts.encoded,
            tokens,
            params,
            wte,
            self.region(ly.wpe),
            t,
            c,
        )?;
        for l in 0..self.cfg.n_layer {
            let (done, rest) = acts.blocks.split_at_mut(l);
            let x = if l == 0 {
                &acts.encoded
            } else {
                &done[l - 1].out
            };
            block::forward(
                be,
                &mut rest[0],
                &mut acts.scratch,
                x,
                params,
                &self.block_regions(l),
                self.dims(b, t),
                &Tp::single(),
            )?;
        }
        let x = acts.blocks.last().map_or(&acts.encoded, |a| &a.out);
        let (w, bias) = (self.region(ly.lnf_w), self.region(ly.lnf_b));
        be.layernorm_forward(
            &mut acts.lnf,
            &mut acts.lnf_mean,
            &mut acts.lnf_rstd,
            x,
            params,
            w,
            bias,
        )?;
        be.logits_forward(&mut acts.logits, &acts.lnf, 0, params, wte, b * t, c, vp)?;
        match targets {
            Some(y) => {
                let v = self.cfg.vocab_size;
                be.softmax_xent(
                    &mut acts.logits,
                    &mut acts.losses,
                    y,
                    b * t,
                    vp,
                    v,
                    grad_scale,
                )?;
                Ok((be.sum(&acts.losses)? / (b * t) as f64) as f32)
            }
            None => Ok(0.0),
        }
    }

    /// Backward pass after a training `forward` (with `grad_scale`): accumulates into `grads`
    /// (flat, same layout as `params`).
    pub fn backward(
        &self,
        params: &B::Buf,
        grads: &mut B::Buf,
        tokens: &B::Tokens,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        let (b, t, c, vp) = (acts.b, acts.t, self.cfg.n_embd, self.cfg.padded_vocab);
        let (be, ly) = (&self.be, &self.layout);
        let wte = self.region(ly.wte);
        let Activations {
            encoded,
            blocks,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            scratch,
            dres,
            dlnf,
            ..
        } = acts;
        // Head: dlnf = dlogits · wte; dwte += dlogitsᵀ · lnf.
        be.logits_backward(dlnf, 0, grads, wte, logits, lnf, params, wte, b * t, c, vp)?;
        be.zero(dres)?;
        let x = blocks.last().map_or(&*encoded, |a| &a.out);
        let (w, bias) = (self.region(ly.lnf_w), self.region(ly.lnf_b));
        be.layernorm_backward(dres, grads, w, bias, dlnf, x, params, w, lnf_mean, lnf_rstd)?;
        for l in (0..self.cfg.n_layer).rev() {
            let x = if l == 0 {
                &*encoded
            } else {
                &blocks[l - 1].out
            };
            let p = self.block_regions(l);
            block::backward(
                be,
                dres,
                grads,
                scratch,
                &blocks[l],
                x,
                params,
                &p,
                self.dims(b, t),
                &Tp::single(),
            )?;
        }
        be.embedding_backward(grads, wte, self.region(ly.wpe), dres, tokens, t, c)
    }

    /// Check that a flat buffer has the layout's size.
    pub fn check_len(&self, what: &str, len: usize) -> Result<()> {
        ensure!(
            len == self.layout.total,
            "{what}: {len} values, the model needs {}",
            self.layout.total
        );
        Ok(())
    }
}
