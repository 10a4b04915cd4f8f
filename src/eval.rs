//! `ferrotron eval`: the mean loss of a model on llm.c-style windows of token shards (sequence
//! i = tokens[i·T .. i·T+T], targets shifted by one; B consecutive sequences per batch; all
//! full batches unless a count is given), on any grid and backend through the training model:
//! see [`crate::train::evaluate`].

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub tokens: u64,
}
