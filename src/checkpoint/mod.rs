//! Checkpoints and weight formats. `hf` reads and writes Hugging Face GPT-2 directories.

pub mod hf;
