//! `ferrotron study report DIR`: summarises a scaling study made by `scripts/scaling-study.sh`.
//!
//! A study folder holds `study.json` (name, mode, requested node counts, the submitted runs)
//! and one folder per run with `run.json`, `metrics.jsonl` and the job's `job.out`. The report
//! writes, into the study folder, `summary.csv` (one row per requested node count),
//! `throughput.png`, `efficiency.png` and `breakdown.png`, and prints a small table.
//!
//! Per run, over the step lines after the first `warmup` ones (the last step alone if that
//! leaves none): `tokens_per_s = tokens_per_step / (median(step_ms) / 1000)`, and the per-step
//! means of compute, communication per group, pipeline bubble and the rest. Against the
//! smallest node count `n0` that ran successfully: `ideal(N) = tps(n0) · N / n0` and
//! `efficiency(N) = (tps(N) / tps(n0)) / (N / n0)`.
//!
//! Failed and missing runs are reported (CSV, stdout, and the returned error), never dropped.

mod measure;
mod plot;
mod read;
mod report;

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::cli::StudyCommand;
use measure::{Baseline, Measured};
use read::{RunEntry, RunFiles, RunInfo, Study};

/// Runs a `ferrotron study` subcommand.
pub fn run(cmd: StudyCommand) -> Result<()> {
    match cmd {
        StudyCommand::Report {
            dir,
            warmup,
            machine,
        } => report(&dir, warmup, machine.as_deref()),
    }
}

/// Outcome of one requested run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// `run.json` present and step lines up to its `steps`.
    Ok,
    /// Started (its folder holds something) but without `run.json` or stopped early.
    Failed,
    /// No folder, or an empty one.
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Missing => "missing",
        }
    }
}

/// One row of the report: a requested node count and what its run measured.
#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub nodes: u64,
    pub status: Status,
    /// `run.json`, when the run wrote one.
    pub info: Option<RunInfo>,
    /// From `run.json`, else the one requested in `study.json`.
    pub global_batch_size: Option<u64>,
    pub measured: Option<Measured>,
    pub tokens_per_s: Option<f64>,
    pub ideal_tokens_per_s: Option<f64>,
    pub efficiency: Option<f64>,
    /// `ferrotron plan`'s tokens/s for the run's config and world on `--machine`.
    pub predicted_tokens_per_s: Option<f64>,
    /// Why a run failed or is missing, and measurement caveats.
    pub notes: Vec<String>,
}

/// Writes `summary.csv`, `throughput.png`, `efficiency.png` and `breakdown.png` into `dir` and
/// prints a table and the paths written.
///
/// # Errors
/// `study.json` missing or invalid, a present `run.json` / `metrics.jsonl` that cannot be
/// parsed, or an output that cannot be written. When every file is written but some runs failed
/// or are missing: `"{k} of {n} runs failed or missing: n2 (failed: …), n4 (missing)"`.
pub fn report(dir: &Path, warmup: usize, machine: Option<&Path>) -> Result<()> {
    let study = Study::load(dir)?;
    let mut rows = summarise(dir, &study, warmup)?;
    if let Some(m) = machine {
        predict(&mut rows, &crate::plan::machine::Machine::load(m)?);
    }
    let mut written = vec![dir.join("summary.csv")];
    report::write_csv(&written[0], &rows)?;
    written.extend(plot::write_plots(dir, &study, &rows)?);
    let mut text = report::format_table(&rows);
    for path in &written {
        text.push_str(&format!("wrote {}\n", path.display()));
    }
    use std::io::Write as _;
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    failures(&rows)
}

/// One row per requested node count of `study`, with scaling against the smallest ok one.
fn summarise(dir: &Path, study: &Study, warmup: usize) -> Result<Vec<RunRow>> {
    let mut rows = study
        .requested()
        .iter()
        .map(|entry| {
            Ok(summarise_run(
                entry,
                &read::read_run(&dir.join(&entry.dir))?,
                warmup,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let baseline = rows
        .iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(|r| Some((r.nodes, r.tokens_per_s?)))
        .min_by_key(|&(nodes, _)| nodes)
        .map(|(nodes, tokens_per_s)| Baseline {
            nodes,
            tokens_per_s,
        });
    if let Some(b) = baseline {
        for row in &mut rows {
            row.ideal_tokens_per_s = Some(b.ideal(row.nodes));
            row.efficiency = row.tokens_per_s.map(|t| b.efficiency(row.nodes, t));
        }
    }
    Ok(rows)
}

/// Fills each row's `predicted_tokens_per_s` from `ferrotron plan`'s model for the run's
/// recorded config and world on machine `m`; a run it cannot predict gets a note why.
fn predict(rows: &mut [RunRow], m: &crate::plan::machine::Machine) {
    for row in rows {
        let Some(info) = &row.info else { continue };
        let Some(text) = &info.config else {
            row.notes
                .push("no config in run.json: no prediction".into());
            continue;
        };
        let cfg = crate::config::Config::from_str_with_overrides(text, &[]);
        match cfg.and_then(|c| crate::plan::evaluate(&c, info.world as usize, m)) {
            Ok(c) => row.predicted_tokens_per_s = Some(c.tokens_per_s),
            Err(e) => row.notes.push(format!("no prediction: {e:#}")),
        }
    }
}

/// The row of one run (without the scaling columns) from what its folder holds.
fn summarise_run(entry: &RunEntry, files: &RunFiles, warmup: usize) -> RunRow {
    let (status, mut notes) = classify(files);
    let measured = measure::measure(&files.steps, warmup);
    if measured.as_ref().is_some_and(|m| m.last_step_only) {
        notes.push(format!(
            "warm-up ({warmup} steps) left none: measured only step {}",
            files.steps.last().map_or(0, |s| s.step)
        ));
    }
    let tokens_per_step = files.info.as_ref().and_then(RunInfo::tokens_per_step);
    let tokens_per_s = measured
        .as_ref()
        .zip(tokens_per_step)
        .and_then(|(m, t)| measure::tokens_per_s(t, m.step_ms_median));
    RunRow {
        nodes: entry.nodes,
        status,
        global_batch_size: files
            .info
            .as_ref()
            .map(|i| i.global_batch_size)
            .or(entry.global_batch_size),
        info: files.info.clone(),
        measured,
        tokens_per_s,
        ideal_tokens_per_s: None,
        efficiency: None,
        predicted_tokens_per_s: None,
        notes,
    }
}

/// Status of a run and the notes that explain a failure.
///
/// Missing: nothing written. Failed: no `run.json` (note: the first `error:` line of `job.out`,
/// else a generic one), or step lines ending before `run.json`'s `steps` (note: "stopped after
/// step K of N", plus the `error:` line if any). Ok otherwise.
fn classify(files: &RunFiles) -> (Status, Vec<String>) {
    let error = files.error_line.clone();
    let Some(info) = &files.info else {
        if !files.wrote_anything {
            return (Status::Missing, vec!["no output".to_string()]);
        }
        let note = error.unwrap_or_else(|| "no run.json: training did not start".to_string());
        return (Status::Failed, vec![note]);
    };
    let last = files.steps.last().map_or(0, |s| s.step);
    if last >= info.steps {
        return (Status::Ok, Vec::new());
    }
    let mut notes = vec![format!("stopped after step {last} of {}", info.steps)];
    notes.extend(error);
    (Status::Failed, notes)
}

/// `Ok(())` when every run is ok, else the error listing the failed and missing ones.
fn failures(rows: &[RunRow]) -> Result<()> {
    let bad: Vec<String> = rows
        .iter()
        .filter_map(|r| match r.status {
            Status::Ok => None,
            Status::Missing => Some(format!("n{} (missing)", r.nodes)),
            Status::Failed => Some(format!("n{} (failed: {})", r.nodes, r.notes.join("; "))),
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "{} of {} runs failed or missing: {}",
        bad.len(),
        rows.len(),
        bad.join(", ")
    ))
}

#[cfg(test)]
mod tests;
