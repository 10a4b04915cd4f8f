//! Which part of the global GPT-2 one rank holds: its pipeline stage's layers and its tensor-
//! parallel shard of each of their tensors, as a local flat buffer with the same conventions as
//! [`ParamLayout`] (one region per tensor, gradients and optimizer state alike).
//!
//! Every local tensor maps to its global tensor by [`Run`]s of contiguous elements, so
//! initialisation (a pure function of the global index), loading, export and resharding are all
//! one loop over runs. Sharding (TP size P, rank r), Megatron style:
//! - `wte [Vp, C]` vocab-parallel: rows `r·Vl .. (r+1)·Vl` (Vp = P·Vl, Vl a multiple of 64);
//!   held by the first stage (embedding) and the last stage (tied LM head).
//! - `c_attn [C, 3C]` and its bias: column-parallel per q, k, v part (heads `r·NH/P ..`).
//! - `mlp.c_fc [C, 4C]` and its bias: column-parallel.
//! - `attn.c_proj [C, C]`, `mlp.c_proj [4C, C]`: row-parallel.
//! - LayerNorms, `wpe`, row-parallel biases: replicated.
//!
//! A tensor is *counted* (in the global gradient norm) on exactly one rank of its replicas:
//! replicated tensors on TP rank 0, the tied `wte` on the first stage only.

use crate::model::gpt2::params::{init_value_stream, BlockIdx, Init, ParamEntry};
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use anyhow::{bail, Result};
use std::ops::Range;

/// `len` elements at offset `global` of the global tensor are at offset `local` of the local one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub global: usize,
    pub local: usize,
    pub len: usize,
}

/// How a tensor is split over TP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Replicated,
    /// Leading dimension split in P blocks.
    Rows,
    /// Last dimension made of `parts` equal parts, each split in P blocks.
    Cols(usize),
}

/// The local parameters of one (TP rank, pipeline stage).
#[derive(Debug, Clone)]
pub struct StageLayout {
    /// Local tensors (names are the global names, shapes the local ones).
    pub entries: Vec<ParamEntry>,
    pub runs: Vec<Vec<Run>>,
    /// How each local tensor is split over TP.
    pub splits: Vec<Split>,
    /// Index of each local tensor in the global [`ParamLayout`].
    pub global_index: Vec<usize>,
    /// Counted in the global gradient norm on this rank.
    pub counted: Vec<bool>,
    pub total: usize,
    pub wte: Option<usize>,
    pub wpe: Option<usize>,
    pub blocks: Vec<BlockIdx>,
    /// Global indices of this stage's layers.
    pub layers: Range<usize>,
    pub lnf_w: Option<usize>,
    pub lnf_b: Option<usize>,
    /// First global vocabulary row of the local `wte` and the number of rows (Vl).
    pub v0: usize,
    pub vl: usize,
    pub tp: usize,
    pub tp_rank: usize,
    pub pp: usize,
    pub stage: usize,
    /// False for [`StageLayout::shapes`]: `runs` left empty.
    with_runs: bool,
}

/// Layers of stage `s` of `pp`: `⌊s·L/pp⌋ .. ⌊(s+1)·L/pp⌋` (as even as possible).
pub fn stage_layers(n_layer: usize, pp: usize, s: usize) -> Range<usize> {
    s * n_layer / pp..(s + 1) * n_layer / pp
}

/// Checks the model shape against TP and PP sizes (the messages name the keys).
pub fn check_shape(cfg: &Gpt2Config, tp: usize, pp: usize) -> Result<()> {
    if !cfg.n_head.is_multiple_of(tp) {
        bail!(
            "model.n_head = {} is not divisible by parallel.tp = {tp} (attention heads are split over tensor-parallel ranks)",
            cfg.n_head
        );
    }
    if cfg.n_layer < pp {
        bail!(
            "model.n_layer = {} is smaller than parallel.pp = {pp} (every pipeline stage needs at least one layer)",
            cfg.n_layer
        );
    }
    if !cfg.padded_vocab.is_multiple_of(64 * tp) {
        bail!(
            "the padded vocabulary {} is not a multiple of 64 × parallel.tp = {}; build the config with Gpt2Config::with_tp_padding",
            cfg.padded_vocab,
            64 * tp
        );
    }
    Ok(())
}

impl StageLayout {
    /// The layout of TP rank `r` of `tp` on stage `s` of `pp`, for the global model `global`
    /// (built from `cfg`, whose vocabulary is padded to a multiple of 64·tp).
    pub fn new(
        cfg: &Gpt2Config,
        global: &ParamLayout,
        tp: usize,
        r: usize,
        pp: usize,
        s: usize,
    ) -> Result<Self> {
        Self::build(cfg, global, (tp, r, pp, s), true)
    }

    /// The same layout without the copy runs (`runs` empty): tensors, offsets and sizes only,
    /// cheap for any model size — what planning needs.
    pub fn shapes(
        cfg: &Gpt2Config,
        global: &ParamLayout,
        tp: usize,
        r: usize,
        pp: usize,
        s: usize,
    ) -> Result<Self> {
        Self::build(cfg, global, (tp, r, pp, s), false)
    }

    fn build(
        cfg: &Gpt2Config,
        global: &ParamLayout,
        (tp, r, pp, s): (usize, usize, usize, usize),
        with_runs: bool,
    ) -> Result<Self> {
        check_shape(cfg, tp, pp)?;
        let layers = stage_layers(cfg.n_layer, pp, s);
        let (first, last) = (s == 0, s + 1 == pp);
        let mut ly = StageLayout {
            entries: Vec::new(),
            runs: Vec::new(),
            splits: Vec::new(),
            global_index: Vec::new(),
            counted: Vec::new(),
            total: 0,
            wte: None,
            wpe: None,
            blocks: Vec::new(),
            layers: layers.clone(),
            lnf_w: None,
            lnf_b: None,
            vl: cfg.padded_vocab / tp,
            v0: r * (cfg.padded_vocab / tp),
            tp,
            tp_rank: r,
            pp,
            stage: s,
            with_runs,
        };
        if first || last {
            ly.wte = Some(ly.add(global, global.wte, Split::Rows, first));
        }
        if first {
            ly.wpe = Some(ly.add(global, global.wpe, Split::Replicated, true));
        }
        for l in layers {
            let g = global.blocks[l];
            use Split::*;
            let mut a = |i, split| ly.add(global, i, split, true);
            let b = BlockIdx {
                ln1_w: a(g.ln1_w, Replicated),
                ln1_b: a(g.ln1_b, Replicated),
                qkv_w: a(g.qkv_w, Cols(3)),
                qkv_b: a(g.qkv_b, Cols(3)),
                proj_w: a(g.proj_w, Rows),
                proj_b: a(g.proj_b, Replicated),
                ln2_w: a(g.ln2_w, Replicated),
                ln2_b: a(g.ln2_b, Replicated),
                fc_w: a(g.fc_w, Cols(1)),
                fc_b: a(g.fc_b, Cols(1)),
                fcproj_w: a(g.fcproj_w, Rows),
                fcproj_b: a(g.fcproj_b, Replicated),
            };
            ly.blocks.push(b);
        }
        if last {
            ly.lnf_w = Some(ly.add(global, global.lnf_w, Split::Replicated, true));
            ly.lnf_b = Some(ly.add(global, global.lnf_b, Split::Replicated, true));
        }
        Ok(ly)
    }

    /// Offset of the first tensor after the embeddings (`wte`, `wpe`): gradients from here on
    /// become final layer by layer during backward; those before it only at the end (the
    /// embedding backward, and the tied-`wte` reduction over the embedding group).
    pub fn tail_start(&self) -> usize {
        let first = self.blocks.first().map(|b| b.ln1_w).or(self.lnf_w);
        first.map_or(self.total, |i| self.entries[i].offset)
    }

    /// The offsets a backward reports as final ([`super::stage::OnReady`]), in the order it
    /// reports them: `ln_f` (last stage), then each block from the last to the first.
    pub fn ready_points(&self) -> Vec<usize> {
        let lnf = self.lnf_w.map(|i| self.entries[i].offset);
        let blocks = self
            .blocks
            .iter()
            .rev()
            .map(|b| self.entries[b.ln1_w].offset);
        lnf.into_iter().chain(blocks).collect()
    }

    /// Adds global tensor `gi` with its split; `primary` is false for a tied copy.
    fn add(&mut self, global: &ParamLayout, gi: usize, split: Split, primary: bool) -> usize {
        let e = &global.entries[gi];
        let (p, r) = (self.tp, self.tp_rank);
        // View the tensor as [rows, cols] (a vector is one row).
        let cols = *e.shape.last().unwrap_or(&1);
        let rows = e.len / cols.max(1);
        let (shape, runs) = match split {
            Split::Replicated => (
                e.shape.clone(),
                vec![Run {
                    global: 0,
                    local: 0,
                    len: e.len,
                }],
            ),
            Split::Rows => {
                let lr = rows / p;
                let mut shape = e.shape.clone();
                shape[0] = lr;
                let run = Run {
                    global: r * lr * cols,
                    local: 0,
                    len: lr * cols,
                };
                (shape, vec![run])
            }
            Split::Cols(parts) => {
                let w = cols / parts / p;
                let mut shape = e.shape.clone();
                *shape.last_mut().unwrap_or(&mut 0) = parts * w;
                let rows = if self.with_runs { rows } else { 0 };
                let runs = (0..rows)
                    .flat_map(|i| {
                        (0..parts).map(move |q| Run {
                            global: i * cols + q * (cols / parts) + r * w,
                            local: (i * parts + q) * w,
                            len: w,
                        })
                    })
                    .collect();
                (shape, runs)
            }
        };
        let len = shape.iter().product();
        let replicated = matches!(split, Split::Replicated);
        self.entries.push(ParamEntry {
            name: e.name.clone(),
            shape,
            offset: self.total,
            len,
            decay: e.decay,
            init: e.init,
        });
        self.runs.push(runs);
        self.splits.push(split);
        self.global_index.push(gi);
        self.counted.push(primary && (!replicated || r == 0));
        self.total += len;
        self.entries.len() - 1
    }

    /// The local tensors counted in the global gradient norm on this rank, as regions.
    pub fn counted_regions(&self) -> Vec<crate::backend::Region> {
        self.entries
            .iter()
            .zip(&self.counted)
            .filter(|(_, &c)| c)
            .map(|(e, _)| crate::backend::Region {
                off: e.offset,
                len: e.len,
            })
            .collect()
    }

    /// Initial local weights for `seed`: element i of each global tensor is the same as in
    /// [`ParamLayout::init`] (padded vocabulary rows zero).
    pub fn init(&self, cfg: &Gpt2Config, seed: u64, buf: &mut [f32]) {
        let real_wte = cfg.vocab_size * cfg.n_embd;
        for (e, runs) in self.entries.iter().zip(&self.runs) {
            let out = &mut buf[e.offset..e.offset + e.len];
            match e.init {
                Init::Ones => out.fill(1.0),
                Init::Zeros => out.fill(0.0),
                Init::Normal(std) => {
                    for run in runs {
                        let o = &mut out[run.local..run.local + run.len];
                        let real = if e.name == "wte.weight" {
                            real_wte.saturating_sub(run.global).min(run.len)
                        } else {
                            run.len
                        };
                        init_value_stream(seed, &e.name, run.global, &mut o[..real], std);
                        o[real..].fill(0.0);
                    }
                }
            }
        }
    }

    /// Local weights cut out of global weights `g` (laid out by `global`).
    pub fn extract(&self, global: &ParamLayout, g: &[f32], local: &mut [f32]) {
        for (i, (e, runs)) in self.entries.iter().zip(&self.runs).enumerate() {
            let ge = &global.entries[self.global_index[i]];
            for run in runs {
                local[e.offset + run.local..][..run.len]
                    .copy_from_slice(&g[ge.offset + run.global..][..run.len]);
            }
        }
    }

    /// Writes local weights into their place in global weights `g`.
    pub fn insert(&self, global: &ParamLayout, local: &[f32], g: &mut [f32]) {
        for (i, (e, runs)) in self.entries.iter().zip(&self.runs).enumerate() {
            let ge = &global.entries[self.global_index[i]];
            for run in runs {
                g[ge.offset + run.global..][..run.len]
                    .copy_from_slice(&local[e.offset + run.local..][..run.len]);
            }
        }
    }
}

/// Copies weights between two layouts of the same model that differ only in vocabulary padding
/// (tensor by tensor, by name; the real rows of `wte` come first, padding rows become zero).
pub fn repad(src_layout: &ParamLayout, src: &[f32], dst_layout: &ParamLayout) -> Vec<f32> {
    let mut out = vec![0.0f32; dst_layout.total];
    for (se, de) in src_layout.entries.iter().zip(&dst_layout.entries) {
        let n = se.len.min(de.len);
        out[de.offset..de.offset + n].copy_from_slice(&src[se.offset..se.offset + n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For many (tp, pp) the shards of all ranks tile the global weights exactly once (counting
    /// the tied copy apart), and sharded init equals the global init.
    #[test]
    fn shards_tile_the_model_and_init_is_grid_invariant() {
        for (tp, pp) in [
            (1, 1),
            (2, 1),
            (1, 2),
            (2, 2),
            (4, 1),
            (1, 4),
            (4, 3),
            (2, 3),
        ] {
            let cfg = Gpt2Config::new(1000, 16, 32, 4, 4).with_tp_padding(tp);
            let global = ParamLayout::new(&cfg);
            let mut want = vec![0.0f32; global.total];
            global.init(&cfg, 5, &mut want);
            let mut seen = vec![0u32; global.total];
            let mut rebuilt = vec![f32::NAN; global.total];
            let mut counted = 0usize;
            for s in 0..pp {
                for r in 0..tp {
                    let ly = StageLayout::new(&cfg, &global, tp, r, pp, s).unwrap();
                    let mut local = vec![0.0f32; ly.total];
                    ly.init(&cfg, 5, &mut local);
                    let mut from_global = vec![0.0f32; ly.total];
                    ly.extract(&global, &want, &mut from_global);
                    assert_eq!(local, from_global, "tp={tp} pp={pp} stage {s} rank {r}");
                    ly.insert(&global, &local, &mut rebuilt);
                    for (i, e) in ly.entries.iter().enumerate() {
                        if ly.counted[i] {
                            counted += e.len;
                        }
                        if ly.counted[i] || (e.name != "wte.weight" && r == 0) {
                            let ge = &global.entries[ly.global_index[i]];
                            for run in &ly.runs[i] {
                                for k in 0..run.len {
                                    seen[ge.offset + run.global + k] += 1;
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(counted, global.total, "tp={tp} pp={pp}: counted once");
            assert_eq!(rebuilt, want, "tp={tp} pp={pp}");
            assert!(seen.iter().all(|&c| c >= 1), "tp={tp} pp={pp}: not tiled");
        }
    }

    #[test]
    fn bad_shapes_name_the_key() {
        let cfg = Gpt2Config::new(1000, 16, 32, 2, 4);
        let e = check_shape(&cfg.with_tp_padding(3), 3, 1).unwrap_err();
        assert!(e.to_string().contains("model.n_head"), "{e}");
        let e = check_shape(&cfg, 1, 3).unwrap_err();
        assert!(e.to_string().contains("model.n_layer"), "{e}");
    }
}
