//! GPT-2 parameters: names, shapes, one flat f32 buffer, and grid-invariant initialisation.
//!
//! Every parameter lives in one contiguous `Vec<f32>` (gradients and optimizer state use the
//! same layout), so the optimizer, the gradient norm and data-parallel reduction work on flat
//! slices. Names follow Hugging Face `GPT2LMHeadModel` without the `transformer.` prefix:
//! `wte.weight [Vp, C]`, `wpe.weight [P, C]`, `h.{l}.ln_1.weight [C]`, `h.{l}.attn.c_attn.weight
//! [C, 3C]` (Conv1D layout: `[in, out]`, y = x·W + b), …, `ln_f.weight [C]`. The token embedding is
//! stored padded to `Vp` rows; rows `V..Vp` are zero and stay zero (their logits are masked).

use super::Gpt2Config;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which initialiser a parameter uses (Hugging Face GPT-2's `_init_weights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²).
    Normal(f32),
    Ones,
    Zeros,
}

/// One named tensor inside the flat buffer.
#[derive(Debug, Clone)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    /// AdamW weight decay applies (2-D weights only, as GPT-2 / llm.c).
    pub decay: bool,
    pub init: Init,
}

/// Per-block parameter indices into [`ParamLayout::entries`].
#[derive(Debug, Clone, Copy)]
pub struct BlockIdx {
    pub ln1_w: usize,
    pub ln1_b: usize,
    pub qkv_w: usize,
    pub qkv_b: usize,
    pub proj_w: usize,
    pub proj_b: usize,
    pub ln2_w: usize,
    pub ln2_b: usize,
    pub fc_w: usize,
    pub fc_b: usize,
    pub fcproj_w: usize,
    pub fcproj_b: usize,
}

/// The layout of all parameters of one model.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    pub entries: Vec<ParamEntry>,
    pub total: usize,
    pub wte: usize,
    pub wpe: usize,
    pub blocks: Vec<BlockIdx>,
    pub lnf_w: usize,
    pub lnf_b: usize,
}

impl ParamLayout {
    pub fn new(cfg: &Gpt2Config) -> Self {
        let (c, vp, p) = (cfg.n_embd, cfg.padded_vocab, cfg.n_positions);
        let std = 0.02f32;
        let proj_std = std / (2.0 * cfg.n_layer as f32).sqrt();
        let mut b = Builder {
            entries: Vec::new(),
            total: 0,
        };
        let wte = b.add("wte.weight", &[vp, c], Init::Normal(std));
        let wpe = b.add("wpe.weight", &[p, c], Init::Normal(std));
        let blocks = (0..cfg.n_layer)
            .map(|l| {
                let n = |s: &str| format!("h.{l}.{s}");
                BlockIdx {
                    ln1_w: b.add(&n("ln_1.weight"), &[c], Init::Ones),
                    ln1_b: b.add(&n("ln_1.bias"), &[c], Init::Zeros),
                    qkv_w: b.add(&n("attn.c_attn.weight"), &[c, 3 * c], Init::Normal(std)),
                    qkv_b: b.add(&n("attn.c_attn.bias"), &[3 * c], Init::Zeros),
                    proj_w: b.add(&n("attn.c_proj.weight"), &[c, c], Init::Normal(proj_std)),
                    proj_b: b.add(&n("attn.c_proj.bias"), &[c], Init::Zeros),
                    ln2_w: b.add(&n("ln_2.weight"), &[c], Init::Ones),
                    ln2_b: b.add(&n("ln_2.bias"), &[c], Init::Zeros),
                    fc_w: b.add(&n("mlp.c_fc.weight"), &[c, 4 * c], Init::Normal(std)),
                    fc_b: b.add(&n("mlp.c_fc.bias"), &[4 * c], Init::Zeros),
                    fcproj_w: b.add(&n("mlp.c_proj.weight"), &[4 * c, c], Init::Normal(proj_std)),
                    fcproj_b: b.add(&n("mlp.c_proj.bias"), &[c], Init::Zeros),
                }
            })
            .collect();
        let lnf_w = b.add("ln_f.weight", &[c], Init::Ones);
        let lnf_b = b.add("ln_f.bias", &[c], Init::Zeros);
        ParamLayout {
            entries: b.entries,
            total: b.total,
            wte,
            wpe,
            blocks,
            lnf_w,
            lnf_b,
        }
    }

    /// The slice of parameter `i` inside a flat buffer.
    pub fn slice<'a>(&self, buf: &'a [f32], i: usize) -> &'a [f32] {
        let e = &self.entries[i];
        &buf[e.offset..e.offset + e.len]
    }

    /// Index of a parameter by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// Number of real (unpadded) parameters, as Hugging Face counts them.
    pub fn num_real_params(&self, cfg: &Gpt2Config) -> usize {
        self.total - (cfg.padded_vocab - cfg.vocab_size) * cfg.n_embd
    }

    /// Fill `buf` with the initial weights for `seed`. Element `i` of parameter `name` is a pure
    /// function of (seed, name, i) — see [`init_value_stream`] — so any sharding of the model
    /// starts from the same global weights. Padded vocabulary rows are zero.
    pub fn init(&self, cfg: &Gpt2Config, seed: u64, buf: &mut [f32]) {
        use rayon::prelude::*;
        assert_eq!(buf.len(), self.total);
        let mut rest = &mut buf[..];
        let mut slices = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let (head, tail) = rest.split_at_mut(e.len);
            slices.push((e, head));
            rest = tail;
        }
        slices.into_par_iter().for_each(|(e, out)| {
            let real = if e.name == "wte.weight" {
                cfg.vocab_size * cfg.n_embd
            } else {
                e.len
            };
            match e.init {
                Init::Ones => out.fill(1.0),
                Init::Zeros => out.fill(0.0),
                Init::Normal(std) => {
                    init_value_stream(seed, &e.name, 0, &mut out[..real], std);
                    out[real..].fill(0.0);
                }
            }
        });
    }
}

struct Builder {
    entries: Vec<ParamEntry>,
    total: usize,
}

impl Builder {
    fn add(&mut self, name: &str, shape: &[usize], init: Init) -> usize {
        let len = shape.iter().product();
        self.entries.push(ParamEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            offset: self.total,
            len,
            decay: shape.len() >= 2,
            init,
        });
        self.total += len;
        self.entries.len() - 1
    }
}

/// FNV-1a 64-bit hash of a parameter name: the ChaCha stream id of that parameter.
pub fn name_stream(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Writes N(0, std²) samples for global flat indices `first .. first + out.len()` of parameter
/// `name`: ChaCha8 keyed by `seed`, stream `name_stream(name)`, and element `i` drawn from the
/// two 32-bit words at word position `2·i` by Box–Muller (`u1 = (w0 + 1) / 2³²`,
/// `u2 = w1 / 2³²`, `z = sqrt(-2 ln u1) · cos(2π u2)`, computed in f64).
pub fn init_value_stream(seed: u64, name: &str, first: usize, out: &mut [f32], std: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(name_stream(name));
    rng.set_word_pos(2 * first as u128);
    for o in out.iter_mut() {
        let w0 = rng.next_u32();
        let w1 = rng.next_u32();
        let u1 = (w0 as f64 + 1.0) / 4294967296.0;
        let u2 = w1 as f64 / 4294967296.0;
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        *o = (z * std as f64) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_a_function_of_the_global_index() {
        let mut whole = vec![0.0f32; 1000];
        init_value_stream(7, "h.0.attn.c_attn.weight", 0, &mut whole, 0.02);
        let mut part = vec![0.0f32; 100];
        init_value_stream(7, "h.0.attn.c_attn.weight", 450, &mut part, 0.02);
        assert_eq!(&whole[450..550], &part[..]);
        let mean = whole.iter().map(|&x| x as f64).sum::<f64>() / 1000.0;
        let var = whole
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / 1000.0;
        assert!(
            mean.abs() < 0.003 && (var.sqrt() - 0.02).abs() < 0.002,
            "{mean} {var}"
        );
        let mut other = vec![0.0f32; 100];
        init_value_stream(7, "h.1.attn.c_attn.weight", 450, &mut other, 0.02);
        assert_ne!(other, part);
    }

    #[test]
    fn layout_counts_gpt2_small() {
        let cfg = Gpt2Config::new(50257, 1024, 768, 12, 12);
        let layout = ParamLayout::new(&cfg);
        assert_eq!(layout.num_real_params(&cfg), 124_439_808);
        assert_eq!(cfg.padded_vocab, 50304);
    }
}
