//! Data pipeline: GPT-2 tokenisation, llm.c token shards, and deterministic
//! sampling.
//!
//! * [`prepare`] — text, JSONL and Parquet files (optionally gzip/zstd) → `train_NNNNNN.bin` /
//!   `val_NNNNNN.bin` shards and a [`manifest`], in parallel over threads and MPI ranks;
//!   [`sources`] and [`parquet_text`] read the input formats.
//! * [`manifest`] — `manifest.json`: a prepared folder's shards, sources and rules.
//! * [`shard`] — the llm.c shard format (1024-byte header + `u16` tokens), memory-mapped.
//! * [`tokenizer`] — GPT-2 BPE (`r50k_base`).
//! * [`loader`] — shards as one virtual stream, shuffled training windows addressed by a
//!   global sample index, and sequential evaluation windows.

pub mod loader;
pub mod manifest;
pub mod parquet_text;
pub mod prepare;
pub mod shard;
pub mod sources;
pub mod tokenizer;

pub use loader::{EvalWindows, SamplerKind, TokenData, TrainSampler};
pub use manifest::{Manifest, Split};
pub use prepare::{prepare_data, PrepareOptions, PrepareSummary, Solo, Team};
pub use shard::{read_shard, write_shard, HEADER_INTS, SHARD_MAGIC, SHARD_VERSION};
pub use tokenizer::{Gpt2Tokenizer, EOT, GPT2_VOCAB};
