//! One rank's stage of the training model ([`StageModel`]) run for generation: the same
//! parameters, layers and tensor-parallel regions as training, with attention against a KV
//! cache ([`crate::backend::Ops::attention_cached`]) instead of saving activations for backward.
//!
//! Rows: a call processes R rows, the new positions of several sequences side by side
//! (a whole prompt at prefill, one position per sequence when decoding). `x [R, C]` is the
//! residual stream: the stage input on entry, the stage output on exit.

use crate::backend::cpu::decode::CachedDims;
use crate::backend::prelude::*;
use crate::backend::Region;
use crate::layers::Tp;
use crate::model::gpt2::block::BlockLinears;
use crate::parallel::stage::StageModel;
use anyhow::{Context, Result};

/// One sequence's rows in a call: `rows` new positions from `start`, at row `row0` of `x`,
/// with cache `cache` (an index into the caches).
#[derive(Debug, Clone, Copy)]
pub struct SeqRows {
    pub row0: usize,
    pub rows: usize,
    pub start: usize,
    pub cache: usize,
}

/// The KV cache of one sequence on this stage: per local layer, keys and values of the local
/// heads, `[2, cap, C/tp]`.
pub struct KvCache<B: Backend> {
    pub layers: Vec<B::Buf>,
    pub cap: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(m: &StageModel<B>, cap: usize) -> Result<Self> {
        let cl = m.cfg.n_embd / m.layout.tp;
        Ok(Self {
            layers: (0..m.layout.blocks.len())
                .map(|_| m.be.zeros(2 * cap * cl))
                .collect::<Result<_>>()?,
            cap,
        })
    }
}

/// The first stage's input rows: `wte[token] + wpe[position]` per row (vocab-parallel over TP:
/// the rank holding the token's row contributes it, rank 0 adds `wpe`, then Σ over TP — the
/// training embedding's regions), gathered on the host from the parameter rows.
pub fn embed<B: Backend>(
    m: &StageModel<B>,
    params: &B::Buf,
    tokens: &[u32],
    positions: &[usize],
    tp: &Tp,
) -> Result<B::Buf> {
    let (be, ly, c) = (&m.be, &m.layout, m.cfg.n_embd);
    let wte = m.wte()?;
    let wpe = m.region(ly.wpe.context("the first stage holds wpe")?);
    let mut host = vec![0.0f32; tokens.len() * c];
    for ((row, &tok), &pos) in host.chunks_mut(c).zip(tokens).zip(positions) {
        let t = tok as usize;
        if (ly.v0..ly.v0 + ly.vl).contains(&t) {
            let r = Region {
                off: wte.off + (t - ly.v0) * c,
                len: c,
            };
            row.copy_from_slice(&be.download_region(params, r)?);
        }
        if tp.rank == 0 {
            let r = Region {
                off: wpe.off + pos * c,
                len: c,
            };
            let p = be.download_region(params, r)?;
            row.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
    }
    let mut x = be.upload(&host)?;
    tp.all_reduce(be, &mut x)?;
    Ok(x)
}

/// This stage's blocks over the rows of `seqs` (R rows in all), appending each sequence's new
/// keys and values to its cache: per block, as in training,
/// `x += c_proj(attn(c_attn(ln_1(x))))` then `x += mlp_proj(gelu(c_fc(ln_2(x))))`, the
/// row-parallel outputs summed over TP.
pub fn blocks<B: Backend>(
    m: &StageModel<B>,
    params: &B::Buf,
    x: &mut B::Buf,
    seqs: &[SeqRows],
    caches: &mut [KvCache<B>],
    tp: &Tp,
) -> Result<()> {
    let (be, c) = (&m.be, m.cfg.n_embd);
    let (cl, nh) = (c / tp.size, m.cfg.n_head / tp.size);
    let r: usize = seqs.iter().map(|s| s.rows).sum();
    let (mut h, mut mean, mut rstd) = (be.zeros(r * c)?, be.zeros(r)?, be.zeros(r)?);
    let (mut qkv, mut atty, mut y) = (be.zeros(r * 3 * cl)?, be.zeros(r * cl)?, be.zeros(r * c)?);
    let (mut pre, mut act) = (be.zeros(r * 4 * cl)?, be.zeros(r * 4 * cl)?);
    for (l, idx) in m.layout.blocks.iter().enumerate() {
        let p = m.block_regions(idx);
        let lin = BlockLinears::new(&p, c, tp.size);
        be.layernorm_forward(&mut h, &mut mean, &mut rstd, x, params, p.ln1_w, p.ln1_b)?;
        lin.qkv.forward(be, &mut qkv, &h, params, r)?;
        for s in seqs {
            let cache = &mut caches[s.cache];
            let d = CachedDims {
                row0: s.row0,
                rows: s.rows,
                start: s.start,
                cap: cache.cap,
                c: cl,
                nh,
            };
            be.attention_cached(&mut atty, &qkv, &mut cache.layers[l], d)?;
        }
        lin.proj.forward(be, tp, &mut y, &atty, params, r)?;
        be.add_inplace(x, &y)?;
        be.layernorm_forward(&mut h, &mut mean, &mut rstd, x, params, p.ln2_w, p.ln2_b)?;
        lin.fc.forward_gelu(be, &mut pre, &mut act, &h, params, r)?;
        lin.fcproj.forward(be, tp, &mut y, &act, params, r)?;
        be.add_inplace(x, &y)?;
    }
    Ok(())
}

/// The last stage's logits `[S, Vp]` for rows `rows` of `x` ([`StageModel::logits`]).
pub fn logits<B: Backend>(
    m: &StageModel<B>,
    params: &B::Buf,
    x: &B::Buf,
    rows: &[usize],
    tp: &Tp,
) -> Result<Vec<f32>> {
    m.logits(params, x, rows, tp)
}
