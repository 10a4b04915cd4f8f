//! The arithmetic of the report: per-run step timings after warm-up, and scaling against the
//! smallest successful node count.

use super::read::StepLine;

/// Communication groups reported, in CSV column order.
pub(crate) const COMM_GROUPS: [&str; 5] = ["tp", "dp", "pp", "emb", "world"];

/// Timings of one run over its measured steps (all in milliseconds per step).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measured {
    /// Number of step lines the numbers below are taken over.
    pub steps_measured: usize,
    /// True when warm-up left no steps and the last step alone was measured.
    pub last_step_only: bool,
    /// Median of `step_ms`.
    pub step_ms_median: f64,
    /// Mean of `compute_ms`.
    pub compute_ms: f64,
    /// Mean of `comm_ms[g]` for each group `g` of [`COMM_GROUPS`] (0 where a line lacks `g`).
    pub comm_ms: [f64; 5],
    /// Mean of `bubble_ms`.
    pub bubble_ms: f64,
    /// `mean(step_ms) − (compute + Σ comm + bubble)`, clamped at 0: time no counter saw.
    pub other_ms: f64,
}

/// The steps to measure: `steps` without its first `warmup` lines; when that leaves none, the
/// last line alone (flagged by the `true`). Empty only when `steps` is.
pub(crate) fn measured_window(steps: &[StepLine], warmup: usize) -> (&[StepLine], bool) {
    if steps.len() > warmup {
        (&steps[warmup..], false)
    } else {
        (&steps[steps.len().saturating_sub(1)..], true)
    }
}

/// Median of `values`: the middle value, or the mean of the two middle ones for an even count.
/// `None` for no values.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Arithmetic mean of `f` over `steps` (which must not be empty).
fn mean(steps: &[StepLine], f: impl Fn(&StepLine) -> f64) -> f64 {
    steps.iter().map(f).sum::<f64>() / steps.len() as f64
}

/// Timings over the steps after `warmup` (see [`measured_window`]); `None` without step lines.
pub(crate) fn measure(steps: &[StepLine], warmup: usize) -> Option<Measured> {
    let (window, last_step_only) = measured_window(steps, warmup);
    let step_ms: Vec<f64> = window.iter().map(|s| s.step_ms).collect();
    let step_ms_median = median(&step_ms)?;
    let comm_ms = COMM_GROUPS.map(|g| mean(window, |s| s.comm_ms.get(g).copied().unwrap_or(0.0)));
    let compute_ms = mean(window, |s| s.compute_ms);
    let bubble_ms = mean(window, |s| s.bubble_ms);
    let accounted = compute_ms + comm_ms.iter().sum::<f64>() + bubble_ms;
    Some(Measured {
        steps_measured: window.len(),
        last_step_only,
        step_ms_median,
        compute_ms,
        comm_ms,
        bubble_ms,
        other_ms: (mean(window, |s| s.step_ms) - accounted).max(0.0),
    })
}

/// Throughput of a step: `tokens_per_step / (step_ms / 1000)`; `None` unless `step_ms > 0`.
pub(crate) fn tokens_per_s(tokens_per_step: u64, step_ms: f64) -> Option<f64> {
    (step_ms > 0.0).then(|| tokens_per_step as f64 / (step_ms / 1000.0))
}

/// The reference point of a study: the smallest node count `n0` that ran successfully, and its
/// throughput `tps0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Baseline {
    pub nodes: u64,
    pub tokens_per_s: f64,
}

impl Baseline {
    /// Ideal throughput on `nodes = N`: `tps0 · N / n0` (perfect linear scaling). The same for
    /// strong and weak scaling: in weak scaling the tokens per step grow ∝ N, so the ideal
    /// throughput still grows ∝ N.
    pub fn ideal(&self, nodes: u64) -> f64 {
        self.tokens_per_s * nodes as f64 / self.nodes as f64
    }

    /// Parallel efficiency on `N` nodes: `(tps(N) / tps0) / (N / n0)` = measured / ideal.
    pub fn efficiency(&self, nodes: u64, tokens_per_s: f64) -> f64 {
        tokens_per_s / self.ideal(nodes)
    }
}
