//! The whole GPT-2: embedding → L blocks → ln_f → tied LM head → cross-entropy.
//!
//! `forward` keeps every activation needed by `backward` in [`Activations`] (sized for one
//! micro-batch `[B, T]`); `backward` accumulates parameter gradients into a flat buffer with
//! the same layout as the parameters, so gradient accumulation over micro-batches is free.

use super::attention::AttnDims;
use super::block::{self, BlockActs, BlockScratch, BlockTensors};
use super::params::{BlockIdx, ParamLayout};
use super::{embedding, head, layernorm, loss, Gpt2Config};

/// A GPT-2 of a given shape on the CPU backend.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    pub cfg: Gpt2Config,
    pub layout: ParamLayout,
    /// Worker threads for GEMMs (the rayon pool the caller runs in should have as many).
    pub threads: usize,
}

/// Saved activations of one micro-batch `[B, T]`. N = B·T.
pub struct Activations {
    pub b: usize,
    pub t: usize,
    pub encoded: Vec<f32>, // [N, C]
    pub blocks: Vec<BlockActs>,
    pub lnf: Vec<f32>,      // [N, C]
    pub lnf_mean: Vec<f32>, // [N]
    pub lnf_rstd: Vec<f32>, // [N]
    /// `[N, Vp]`: logits after forward; their gradient after a training forward.
    pub logits: Vec<f32>,
    pub losses: Vec<f32>, // [N]
    scratch: BlockScratch,
    dres: Vec<f32>, // [N, C]
}

impl Activations {
    pub fn new(cfg: &Gpt2Config, b: usize, t: usize) -> Self {
        let (n, c) = (b * t, cfg.n_embd);
        Self {
            b,
            t,
            encoded: vec![0.0; n * c],
            blocks: (0..cfg.n_layer)
                .map(|_| BlockActs::new(b, t, c, cfg.n_head))
                .collect(),
            lnf: vec![0.0; n * c],
            lnf_mean: vec![0.0; n],
            lnf_rstd: vec![0.0; n],
            logits: vec![0.0; n * cfg.padded_vocab],
            losses: vec![0.0; n],
            scratch: BlockScratch::new(n, c),
            dres: vec![0.0; n * c],
        }
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

impl Gpt2 {
    pub fn new(cfg: Gpt2Config, threads: usize) -> Self {
        Self {
            layout: ParamLayout::new(&cfg),
            cfg,
            threads: threads.max(1),
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

    fn block_params<'a>(&self, params: &'a [f32], l: usize) -> BlockTensors<&'a [f32]> {
        BlockTensors::from_array(
            self.layout.blocks[l]
                .array()
                .map(|i| self.layout.slice(params, i)),
        )
    }

    /// Forward pass over tokens `[B, T]`. With `targets`, computes per-token losses and returns
    /// their mean; with `grad_scale`, also leaves `scale · ∂(Σ loss)/∂logits` in `acts.logits`
    /// for [`Gpt2::backward`]. Without targets, `acts.logits` holds the logits and 0 is returned.
    pub fn forward(
        &self,
        params: &[f32],
        tokens: &[u32],
        targets: Option<&[u32]>,
        grad_scale: Option<f32>,
        acts: &mut Activations,
    ) -> f32 {
        let (b, t, c, vp) = (acts.b, acts.t, self.cfg.n_embd, self.cfg.padded_vocab);
        let n = b * t;
        assert_eq!(tokens.len(), n, "forward: tokens must be [B, T]");
        let ly = &self.layout;
        let wte = ly.slice(params, ly.wte);
        embedding::forward(
            &mut acts.encoded,
            tokens,
            wte,
            ly.slice(params, ly.wpe),
            t,
            c,
        );
        for l in 0..self.cfg.n_layer {
            let (done, rest) = acts.blocks.split_at_mut(l);
            let x = if l == 0 {
                &acts.encoded
            } else {
                &done[l - 1].out
            };
            block::forward(
                &mut rest[0],
                x,
                &self.block_params(params, l),
                self.dims(b, t),
                self.threads,
            );
        }
        let x = acts.blocks.last().map_or(&acts.encoded, |a| &a.out);
        let (w, bias) = (ly.slice(params, ly.lnf_w), ly.slice(params, ly.lnf_b));
        layernorm::forward(
            &mut acts.lnf,
            &mut acts.lnf_mean,
            &mut acts.lnf_rstd,
            x,
            w,
            bias,
        );
        head::logits_forward(&mut acts.logits, &acts.lnf, wte, n, c, vp, self.threads);
        match targets {
            Some(y) => {
                assert_eq!(y.len(), n, "forward: targets must be [B, T]");
                let v = self.cfg.vocab_size;
                loss::softmax_xent(&mut acts.logits, &mut acts.losses, y, vp, v, grad_scale);
                (acts.losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32
            }
            None => 0.0,
        }
    }

    /// Backward pass after a training `forward` (with `grad_scale`): accumulates into `grads`
    /// (flat, same layout as `params`).
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut [f32],
        tokens: &[u32],
        acts: &mut Activations,
    ) {
        let (b, t, c, vp) = (acts.b, acts.t, self.cfg.n_embd, self.cfg.padded_vocab);
        let n = b * t;
        let ly = &self.layout;
        let mut g = split_mut(ly, grads);
        let wte = ly.slice(params, ly.wte);
        let Activations {
            encoded,
            blocks,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            scratch,
            dres,
            ..
        } = acts;
        // Head: dlnf = dlogits · wte; dwte += dlogitsᵀ · lnf.  (dlnf kept in scratch.)
        let mut dlnf = vec![0.0f32; n * c];
        head::logits_backward(
            &mut dlnf,
            g[ly.wte],
            logits,
            lnf,
            wte,
            n,
            c,
            vp,
            self.threads,
        );
        dres.fill(0.0);
        let x = blocks.last().map_or(&encoded[..], |a| &a.out[..]);
        let lnf_w = ly.slice(params, ly.lnf_w);
        let [dw, db] = g
            .get_disjoint_mut([ly.lnf_w, ly.lnf_b])
            .expect("distinct parameter indices");
        layernorm::backward(dres, dw, db, &dlnf, x, lnf_w, lnf_mean, lnf_rstd);
        for l in (0..self.cfg.n_layer).rev() {
            let x = if l == 0 {
                &encoded[..]
            } else {
                &blocks[l - 1].out[..]
            };
            let idx = ly.blocks[l].array();
            let gl = g.get_disjoint_mut(idx).expect("distinct parameter indices");
            let mut gb = BlockTensors::from_array(gl.map(|s| &mut **s));
            let p = self.block_params(params, l);
            block::backward(
                dres,
                &mut gb,
                scratch,
                &blocks[l],
                x,
                &p,
                self.dims(b, t),
                self.threads,
            );
        }
        let [dwte, dwpe] = g
            .get_disjoint_mut([ly.wte, ly.wpe])
            .expect("distinct parameter indices");
        embedding::backward(dwte, dwpe, dres, tokens, t, c);
    }
}

/// Splits a flat buffer into one mutable slice per parameter (layout order).
pub fn split_mut<'a>(layout: &ParamLayout, buf: &'a mut [f32]) -> Vec<&'a mut [f32]> {
    assert_eq!(buf.len(), layout.total);
    let mut out = Vec::with_capacity(layout.entries.len());
    let mut rest = buf;
    for e in &layout.entries {
        let (h, tail) = rest.split_at_mut(e.len);
        out.push(h);
        rest = tail;
    }
    out
}
