//! Generation on one pipeline (a data-parallel replica): batched prefill (each prompt in one
//! forward), then decoding one position per sequence per forward, the sequences split into G
//! groups that follow each other through the stages so that the stages overlap (G = pp when
//! there are enough prompts: while the last stage samples group g, the others already run the
//! groups after it).
//!
//! Every stage runs the same order, (step k, group g) for k = 0 .. max_new, g = 0 .. G: the
//! first stage embeds the group's tokens (the prompts at k = 0, else the tokens the last stage
//! sampled at k − 1, sent back to it), a middle stage receives the activation `[R, C]` from
//! the stage before, each runs its blocks against its KV caches and sends the result on; the
//! last stage takes each sequence's last row through ln_f and the head and samples. Sends are
//! non-blocking and every dependency points to an earlier (k, g), so nothing can deadlock.

use super::sample::{sample, Sampling};
use super::stage::{self as gen_stage, KvCache, SeqRows};
use crate::backend::prelude::*;
use crate::comm::{AsyncComm, Pending};
use crate::parallel::stage::StageModel;
use crate::parallel::Tp;
use anyhow::Result;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

const TAG_ACT: i32 = 7101;
const TAG_TOKENS: i32 = 7102;

/// One prompt: its index in the whole request (seeds its sampling) and its token ids.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub index: usize,
    pub ids: Vec<u32>,
}

/// Generates `max_new` tokens after each prompt on this pipeline. Returns them on the last
/// stage (one Vec per prompt, in order); other stages return empty Vecs.
pub fn run<B: Backend>(
    m: &StageModel<B>,
    params: &B::Buf,
    prompts: &[Prompt],
    max_new: usize,
    s: &Sampling,
    tp: &Tp,
    pp: Option<&dyn AsyncComm>,
) -> Result<Vec<Vec<u32>>> {
    let n = prompts.len();
    if n == 0 {
        // A data-parallel replica with no prompt (fewer prompts than replicas): every rank of
        // it agrees, so it skips the pipeline together.
        return Ok(Vec::new());
    }
    let stages = m.layout.pp;
    let stage = m.layout.stage;
    let groups = stages.min(n).max(1);
    let c = m.cfg.n_embd;
    let vocab = m.cfg.vocab_size;
    let mut caches: Vec<KvCache<B>> = prompts
        .iter()
        .map(|p| KvCache::new(m, p.ids.len() + max_new))
        .collect::<Result<_>>()?;
    let mut rngs: Vec<ChaCha8Rng> = prompts
        .iter()
        .map(|p| ChaCha8Rng::seed_from_u64(s.seed.wrapping_add(p.index as u64)))
        .collect();
    let mut out = vec![Vec::with_capacity(max_new); n];
    let mut next = vec![0u32; n];
    let mut sends: Vec<Pending> = Vec::new();
    for k in 0..max_new {
        for g in 0..groups {
            let members: Vec<usize> = (g..n).step_by(groups).collect();
            let mut seqs = Vec::with_capacity(members.len());
            let mut row0 = 0;
            for &i in &members {
                let len = prompts[i].ids.len();
                let (rows, start) = if k == 0 { (len, 0) } else { (1, len + k - 1) };
                seqs.push(SeqRows {
                    row0,
                    rows,
                    start,
                    cache: i,
                });
                row0 += rows;
            }
            let r = row0;
            let mut x = if stage == 0 {
                if k > 0 && stages > 1 {
                    let mut t = vec![0.0f32; members.len()];
                    pp.expect("pp > 1 has a group")
                        .recv_f32(stages - 1, TAG_TOKENS, &mut t)?;
                    for (&i, &v) in members.iter().zip(&t) {
                        next[i] = v as u32;
                    }
                }
                let (mut tokens, mut positions) = (Vec::with_capacity(r), Vec::with_capacity(r));
                for (&i, q) in members.iter().zip(&seqs) {
                    if k == 0 {
                        tokens.extend_from_slice(&prompts[i].ids);
                    } else {
                        tokens.push(next[i]);
                    }
                    positions.extend(q.start..q.start + q.rows);
                }
                gen_stage::embed(m, params, &tokens, &positions, tp)?
            } else {
                let mut h = vec![0.0f32; r * c];
                pp.expect("pp > 1 has a group")
                    .recv_f32(stage - 1, TAG_ACT, &mut h)?;
                m.be.upload(&h)?
            };
            gen_stage::blocks(m, params, &mut x, &seqs, &mut caches, tp)?;
            if stage + 1 < stages {
                let h = m.be.download(&x)?;
                sends.push(pp.expect("pp > 1").isend_f32(stage + 1, TAG_ACT, h)?);
                continue;
            }
            let last: Vec<usize> = seqs.iter().map(|q| q.row0 + q.rows - 1).collect();
            let z = gen_stage::logits(m, params, &x, &last, tp)?;
            let vp = z.len() / members.len().max(1);
            let mut sampled = Vec::with_capacity(members.len());
            for (j, &i) in members.iter().enumerate() {
                let t = sample(&z[j * vp..j * vp + vocab], s, &mut rngs[i]);
                out[i].push(t);
                next[i] = t;
                sampled.push(t as f32);
            }
            if stages > 1 && k + 1 < max_new {
                sends.push(pp.expect("pp > 1").isend_f32(0, TAG_TOKENS, sampled)?);
            }
        }
        // Completed sends release their buffers as the run goes.
        for p in &mut sends {
            p.test()?;
        }
    }
    for p in sends {
        p.wait()?;
    }
    Ok(if stage + 1 == stages {
        out
    } else {
        vec![Vec::new(); n]
    })
}
