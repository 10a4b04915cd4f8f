//! Models. GPT-2 (Hugging Face `GPT2LMHeadModel`-exact) is the one model.

pub mod gpt2;
