//! `ferrotron eval`: mean loss of a Hugging Face GPT-2 on llm.c-style windows of a token shard
//! (sequence i = tokens[i·T .. i·T+T], targets shifted by one; B consecutive sequences per batch;
//! all full batches unless a count is given).

use crate::checkpoint::hf;
use crate::data::{EvalWindows, TokenData};
use crate::model::gpt2::Gpt2;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub tokens: u64,
}

/// Evaluate the model in `hf_dir` on `data` (a shard file, directory or `dir/prefix_*.bin`).
pub fn run(
    hf_dir: &Path,
    data: &str,
    batch: usize,
    seq: usize,
    batches: Option<usize>,
    threads: usize,
) -> Result<EvalResult> {
    let (cfg, params) = hf::load(hf_dir)?;
    if batch == 0 || seq == 0 {
        bail!("--batch and --seq must be > 0");
    }
    if seq > cfg.n_positions {
        bail!(
            "--seq {seq} exceeds the model's n_positions {}",
            cfg.n_positions
        );
    }
    let files = TokenData::from_pattern(data, crate::data::Split::Val)?;
    let tokens = Arc::new(TokenData::open(&files, cfg.vocab_size).context("--data")?);
    let windows = EvalWindows::new(tokens, seq).context("--data")?;
    let full = windows.num_full_batches(batch);
    let k = batches.unwrap_or(full);
    if k == 0 || k > full {
        bail!("--data {data}: {} sequences of {seq} tokens give {full} full batches of {batch}; asked for {k}", windows.num_sequences());
    }
    let model = Gpt2::with_backend(
        cfg,
        crate::backend::cpu::Cpu::resolved(None, threads, true)?,
    );
    let params = crate::backend::Backend::upload_vec(&model.be, params)?;
    let mut acts = model.activations(batch, seq)?;
    let (mut inputs, mut targets) = (vec![0u32; batch * seq], vec![0u32; batch * seq]);
    let mut sum = 0.0f64;
    for i in 0..k {
        windows.batch(i, batch, &mut inputs, &mut targets)?;
        model.forward(&params, &inputs, Some(&targets), None, &mut acts)?;
        sum += acts.losses.iter().map(|&x| x as f64).sum::<f64>();
    }
    let tokens = (k * batch * seq) as u64;
    Ok(EvalResult {
        loss: sum / tokens as f64,
        tokens,
    })
}
