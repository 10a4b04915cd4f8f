//! The non-finite guard: every step's loss and global gradient norm (already agreed over all
//! ranks) are checked before clipping and the update. What is not finite is named — the loss,
//! the gradient norm, and the first gradient tensor (in the global parameter order) holding a
//! NaN or an infinity on any rank — and `train.on_nonfinite` decides: stop every rank, or
//! discard the step and run it again (see `Trainer::step`).
//!
//! Also the testing aids `FERROTRON_TEST_NAN_GRAD_AT=STEP[:RANK]` (1-based step, world rank,
//! default the last): that rank's gradient gets one NaN after the step's reductions, once per
//! process — a non-finite gradient under a finite loss; and `FERROTRON_TEST_INF_LOSS_AT=STEP`:
//! the loss of that step is +∞ (gradients finite).

use anyhow::Result;

use crate::comm::Communicator;
use crate::model::gpt2::params::ParamEntry;
use crate::model::gpt2::ParamLayout;

/// What was not finite in a step, e.g. "the loss (NaN) and the gradient norm (NaN) are not
/// finite".
pub fn describe(loss: f32, norm: f64) -> String {
    let mut parts = Vec::new();
    if !loss.is_finite() {
        parts.push(format!("the loss ({loss})"));
    }
    if !norm.is_finite() {
        parts.push(format!("the gradient norm ({norm})"));
    }
    let verb = if parts.len() > 1 { "are" } else { "is" };
    format!("{} {verb} not finite", parts.join(" and "))
}

/// Index (in `global`'s order) of the first local tensor holding a non-finite value among
/// `values`, which hold the local parameters `range` of `entries` (a whole stage buffer, or a
/// ZeRO shard).
pub fn first_nonfinite(
    entries: &[ParamEntry],
    global: &ParamLayout,
    values: &[f32],
    range: std::ops::Range<usize>,
) -> Option<usize> {
    entries
        .iter()
        .filter_map(|e| {
            let (a, b) = (e.offset.max(range.start), (e.offset + e.len).min(range.end));
            let bad = a < b
                && values[a - range.start..b - range.start]
                    .iter()
                    .any(|x| !x.is_finite());
            bad.then(|| global.entries.iter().position(|g| g.name == e.name))
                .flatten()
        })
        .min()
}

/// The first non-finite tensor over all ranks of `world` (collective): each rank gives its
/// own candidate, the lowest global index wins.
pub fn agree_first(
    world: &dyn Communicator,
    mine: Option<usize>,
    global: &ParamLayout,
) -> Result<Option<String>> {
    let mut all = vec![0.0f32; world.size()];
    let own = [mine.map_or(-1.0, |i| i as f32)];
    world.all_gather_f32(&own, &mut all)?;
    Ok(all
        .iter()
        .filter(|&&x| x >= 0.0)
        .map(|&x| x as usize)
        .min()
        .and_then(|i| global.entries.get(i))
        .map(|e| e.name.clone()))
}

/// `FERROTRON_TEST_NAN_GRAD_AT=STEP[:RANK]`: (0-based step, rank) for a world of `world`.
pub fn nan_grad_hook(world: usize) -> Option<(usize, usize)> {
    let v = std::env::var("FERROTRON_TEST_NAN_GRAD_AT").ok()?;
    let (step, rank) = match v.split_once(':') {
        Some((s, r)) => (s.parse::<usize>().ok()?, r.parse().ok()?),
        None => (v.parse::<usize>().ok()?, world - 1),
    };
    Some((step.checked_sub(1)?, rank))
}

/// `FERROTRON_TEST_INF_LOSS_AT=STEP` (1-based): the 0-based step whose loss is made infinite.
pub fn inf_loss_hook() -> Option<usize> {
    std::env::var("FERROTRON_TEST_INF_LOSS_AT")
        .ok()?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}
