//! The pipeline engine: executes one stage's action list (from `schedule`) for one optimizer
//! step — forwards and backwards of micro-batches on this stage, activations and gradients
//! exchanged with the neighbouring stages over the `pp` group by point-to-point messages.
//!
//! Messages move by the run's point-to-point transport ([`BufComm::send_buf`]/`recv_buf`: MPI on
//! host copies, or CUDA-aware MPI on device copies).
//! Sends are non-blocking (each owns its buffer; all are completed at the end of the step), so
//! a schedule whose simulation completes cannot deadlock; receives block. The time spent
//! waiting for a message to arrive (and for sends to drain at the end) is the stage's idle time,
//! reported as the pipeline bubble. Tags: 0 for activations, 1 for gradients; MPI keeps
//! messages between two ranks with one tag in order, and the schedules send and receive
//! micro-batches in the same order (unit-tested in `schedule`).

use super::stage::{OnReady, StageActs, StageModel, StageScratch};
use super::Tp;
use crate::backend::prelude::*;
use crate::comm::{AsyncComm, Pending};
use crate::schedule::Action;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

const TAG_ACT: i32 = 0;
const TAG_GRAD: i32 = 1;

/// What one stage needs besides its model: the TP group and, for pp > 1, the pp group (whose
/// rank index is the stage index).
pub struct Links<'a> {
    pub tp: Tp<'a>,
    pub pp: Option<&'a dyn AsyncComm>,
}

/// Micro-batch `mb`'s input tokens and targets, written into the two slices.
pub type FillBatch<'a> = dyn FnMut(usize, &mut [u32], &mut [u32]) -> Result<()> + 'a;

/// Result of running a stage's actions.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOut {
    /// Σ over micro-batches of the mean token loss (last stage; 0 elsewhere).
    pub loss_sum: f64,
    /// Seconds blocked waiting for neighbours.
    pub idle_s: f64,
}

/// Runs `actions` on this stage. With `grads` (training), backwards accumulate into it and
/// `slots` must hold as many activation sets as the schedule keeps in flight; without
/// (forward-only evaluation), the lists contain no backward actions and one slot suffices.
/// `ready` is passed to the step's last backward (see [`OnReady`]).
pub fn run<B: Backend>(
    model: &StageModel<B>,
    params: &B::Buf,
    mut grads: Option<&mut B::Buf>,
    slots: &mut [StageActs<B>],
    scratch: &mut StageScratch<B>,
    actions: &[Action],
    fill: &mut FillBatch,
    grad_scale: Option<f32>,
    links: &Links,
    mut ready: Option<&mut OnReady<B>>,
) -> Result<RunOut> {
    let be = &model.be;
    // The weights are borrowed, so unchanged, until this function returns: pinned until then.
    be.pin_weights(params)?;
    let _unpin = Unpin(be);
    let stage = model.layout.stage;
    let mut out = RunOut::default();
    let mut slot_of = SlotMap::new(slots.len());
    let mut sends: Vec<Pending> = Vec::new();
    // Every message is one [B·T, C] activation or gradient.
    let act_len = slots.first().map_or(0, |a| a.b * a.t) * model.cfg.n_embd;
    let pp = || links.pp.context("pipeline action without a pp group");
    // Gradients become final during the step's last backward.
    let last_bwd = actions
        .iter()
        .rposition(|a| matches!(a, Action::Backward(_)));
    for (i, &a) in actions.iter().enumerate() {
        match a {
            Action::RecvAct(mb) => {
                let s = slot_of.assign(mb)?;
                let input = &mut slots[s].input;
                out.idle_s += be.recv_buf(pp()?, input, act_len, stage - 1, TAG_ACT)?;
            }
            Action::Forward(mb) => {
                let s = slot_of.assign(mb)?;
                let sl = &mut slots[s];
                if model.is_first() || model.is_last() {
                    fill(mb, &mut sl.tokens, &mut sl.targets)?;
                }
                let train = grads.as_deref_mut().zip(grad_scale);
                out.loss_sum += model.forward(params, sl, scratch, train, &links.tp)?;
                if grads.is_none() {
                    // Forward only: the slot is free once its output is sent (or consumed).
                    slot_of.release(mb)?;
                    if model.is_last() {
                        continue;
                    }
                    let act = model.output(&slots[s]);
                    sends.push(be.send_buf(pp()?, act, stage + 1, TAG_ACT)?);
                }
            }
            Action::SendAct(mb) => {
                if grads.is_some() {
                    let s = slot_of.get(mb)?;
                    let act = model.output(&slots[s]);
                    sends.push(be.send_buf(pp()?, act, stage + 1, TAG_ACT)?);
                }
            }
            Action::RecvGrad(_) => {
                let dres = &mut scratch.dres;
                out.idle_s += be.recv_buf(pp()?, dres, act_len, stage + 1, TAG_GRAD)?;
            }
            Action::Backward(mb) => {
                let g = grads
                    .as_deref_mut()
                    .context("backward in a forward-only run")?;
                let s = slot_of.get(mb)?;
                let hook = if Some(i) == last_bwd {
                    ready.as_deref_mut()
                } else {
                    None
                };
                model.backward(params, g, &slots[s], scratch, &links.tp, hook)?;
                slot_of.release(mb)?;
            }
            Action::SendGrad(_) => {
                sends.push(be.send_buf(pp()?, &scratch.dres, stage - 1, TAG_GRAD)?);
            }
        }
        progress(&mut sends)?;
    }
    let t0 = std::time::Instant::now();
    for s in sends {
        s.wait()?;
    }
    out.idle_s += t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Unpins the weights when a run ends, by return or by error.
struct Unpin<'a, B: Backend>(&'a B);

impl<B: Backend> Drop for Unpin<'_, B> {
    fn drop(&mut self) {
        self.0.unpin_weights();
    }
}

/// Drives the pending sends once (`MPI_Test`) and drops the finished ones. A large message
/// whose receiver cannot copy it directly moves only while its sender is inside MPI, so without
/// this a stage that only computes (GPipe's forwards) would hold back its neighbour.
fn progress(sends: &mut Vec<Pending>) -> Result<()> {
    let mut k = 0;
    while k < sends.len() {
        if sends[k].test()? {
            sends.swap_remove(k);
        } else {
            k += 1;
        }
    }
    Ok(())
}

/// Which activation slot holds which micro-batch.
struct SlotMap {
    of: HashMap<usize, usize>,
    free: Vec<usize>,
    n: usize,
}

impl SlotMap {
    fn new(n: usize) -> Self {
        Self {
            of: HashMap::new(),
            free: (0..n).rev().collect(),
            n,
        }
    }
    /// The slot of `mb`, taking a free one on first use.
    fn assign(&mut self, mb: usize) -> Result<usize> {
        if let Some(&s) = self.of.get(&mb) {
            return Ok(s);
        }
        let Some(s) = self.free.pop() else {
            bail!(
                "the pipeline schedule keeps more micro-batches in flight than the {} activation slots",
                self.n
            );
        };
        self.of.insert(mb, s);
        Ok(s)
    }
    fn get(&self, mb: usize) -> Result<usize> {
        self.of
            .get(&mb)
            .copied()
            .with_context(|| format!("micro-batch {mb} used before its forward"))
    }
    fn release(&mut self, mb: usize) -> Result<()> {
        let s = self.get(mb)?;
        self.of.remove(&mb);
        self.free.push(s);
        Ok(())
    }
}
