//! GPT-2 exactly as Hugging Face `GPT2LMHeadModel`: pre-LN blocks, tanh-GELU, learned
//! positions, `lm_head` tied to `wte`, LayerNorm eps 1e-5.
//!
//! Here: the shape ([`Gpt2Config`]), the parameter layout and init ([`ParamLayout`]) and one
//! transformer block's forward and backward on any backend ([`block`]). The layers' kernels
//! are the backend's (`backend::cpu::kernels` holds their CPU twins, forward and backward side
//! by side, llm.c style); parallelism is applied by `parallel` (`parallel::stage::StageModel`,
//! the only forward and backward of the whole model).

pub mod block;
#[cfg(test)]
mod gradcheck;
pub mod params;

pub use params::ParamLayout;

pub use crate::backend::cpu::kernels::layernorm::LN_EPS;

/// Model shape. `padded_vocab` rounds `vocab_size` up to a multiple of 64 (GEMM-friendly);
/// the padding rows of `wte` are zero and their logits are masked out of softmax and loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub padded_vocab: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
}

impl Gpt2Config {
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        let padded_vocab = vocab_size.div_ceil(64) * 64;
        Self {
            vocab_size,
            padded_vocab,
            n_positions,
            n_embd,
            n_layer,
            n_head,
        }
    }

    /// Whether the shape is one ferrotron can hold: every dimension positive and bounded
    /// (vocab ≤ 2²², positions ≤ 2²⁰, width ≤ 2¹⁶, layers ≤ 4096, heads dividing the width)
    /// and at most 2⁴⁰ parameters — so a corrupt header or config is an error, never a huge
    /// allocation or an endless loop. `what` names the source in messages.
    pub fn check_bounds(&self, what: &str) -> anyhow::Result<()> {
        crate::config::check_model_dims(
            what,
            self.vocab_size,
            self.n_positions,
            self.n_embd,
            self.n_layer,
            self.n_head,
        )
    }

    /// The same model with the vocabulary padded to a multiple of 64·tp, so each of `tp`
    /// vocab-parallel shards has a multiple of 64 rows (the padding is masked; the real model
    /// and its exported weights do not change).
    pub fn with_tp_padding(self, tp: usize) -> Self {
        let m = 64 * tp.max(1);
        Self {
            padded_vocab: self.vocab_size.div_ceil(m) * m,
            ..self
        }
    }

    pub fn from_model_config(m: &crate::config::ModelConfig) -> Self {
        Self::new(m.vocab_size, m.n_positions, m.n_embd, m.n_layer, m.n_head)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Model FLOPs per trained token, llm.c's convention: 6·N + 6·L·T·C (N real parameters,
    /// causal attention counted once).
    pub fn flops_per_token(&self, num_params: usize, seq_len: usize) -> f64 {
        6.0 * num_params as f64 + 6.0 * (self.n_layer * seq_len * self.n_embd) as f64
    }
}
