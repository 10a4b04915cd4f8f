//! Optimizer pieces: AdamW on fp32 master weights, warmup + cosine LR, global-norm clipping.

pub mod adamw;
pub mod clip;
pub mod lr;

pub use adamw::{AdamW, AdamWConfig};
pub use lr::LrSchedule;
