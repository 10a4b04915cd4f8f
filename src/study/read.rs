//! Reading a study folder: `study.json`, and per run `run.json`, `metrics.jsonl` and `job.out`.
//!
//! Only the fields the report needs are read; extra fields are ignored. A file that exists but
//! cannot be parsed is an error naming it (and, for `metrics.jsonl`, the line).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// `DIR/study.json`, written by `scripts/scaling-study.sh`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Study {
    /// Study name (used in plot titles).
    pub name: String,
    /// `strong` or `weak`.
    pub mode: String,
    /// Requested node counts, in report order (default: those of `runs`).
    #[serde(default)]
    pub nodes: Vec<u64>,
    /// The submitted runs.
    #[serde(default)]
    pub runs: Vec<RunEntry>,
}

/// One run of `study.json`'s `runs`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RunEntry {
    pub nodes: u64,
    /// The run's folder, relative to the study folder.
    pub dir: String,
    /// The requested global batch size (used when the run wrote no `run.json`).
    #[serde(default)]
    pub global_batch_size: Option<u64>,
}

impl Study {
    /// Reads and parses `DIR/study.json`; errors name the file.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("study.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading study file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid study file", path.display()))
    }

    /// One entry per requested node count, in `nodes` order (or `runs` order when `nodes` is
    /// empty). A node count without a `runs` entry gets the folder `n<N>` and no batch size.
    pub fn requested(&self) -> Vec<RunEntry> {
        if self.nodes.is_empty() {
            return self.runs.clone();
        }
        let entry = |n: u64| {
            self.runs
                .iter()
                .find(|r| r.nodes == n)
                .cloned()
                .unwrap_or(RunEntry {
                    nodes: n,
                    dir: format!("n{n}"),
                    global_batch_size: None,
                })
        };
        self.nodes.iter().map(|&n| entry(n)).collect()
    }
}

/// The process grid of a run.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub(crate) struct Grid {
    pub dp: u64,
    pub tp: u64,
    pub pp: u64,
}

/// The fields of `run.json` (written by `ferrotron train` at start) that the report uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RunInfo {
    /// MPI ranks.
    pub world: u64,
    pub grid: Grid,
    pub global_batch_size: u64,
    #[serde(default)]
    pub seq_len: Option<u64>,
    #[serde(default)]
    tokens_per_step: Option<u64>,
    /// The configured `train.steps`: a complete run has a step line for step `steps`.
    pub steps: u64,
    /// The run's whole configuration (TOML), for `--machine`'s predictions.
    #[serde(default)]
    pub config: Option<String>,
}

impl RunInfo {
    /// Tokens per optimizer step: the `tokens_per_step` field, else `global_batch_size · seq_len`.
    pub fn tokens_per_step(&self) -> Option<u64> {
        self.tokens_per_step
            .or_else(|| Some(self.global_batch_size * self.seq_len?))
    }
}

/// The timing fields of one step line of `metrics.jsonl` (all in milliseconds).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct StepLine {
    /// 1-based step number.
    pub step: u64,
    /// Wall time of the step.
    pub step_ms: f64,
    #[serde(default)]
    pub compute_ms: f64,
    #[serde(default)]
    pub bubble_ms: f64,
    /// Time in each communication group's calls (`tp`, `dp`, `pp`, `emb`, `world`).
    #[serde(default)]
    pub comm_ms: BTreeMap<String, f64>,
}

/// The step lines of a metrics file, sorted by step. Lines without a `loss` key (validation-only
/// and checkpoint lines) and blank lines are skipped; `path` is used in error messages only.
///
/// # Errors
/// A line that is not a JSON object, or a step line without a numeric `step` and `step_ms`; the
/// error names `path:line`.
pub(crate) fn parse_metrics(text: &str, path: &Path) -> Result<Vec<StepLine>> {
    let mut steps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not a JSON line", at()))?;
        let Some(object) = value.as_object() else {
            bail!("{}: expected a JSON object", at());
        };
        if !object.contains_key("loss") {
            continue;
        }
        let step: StepLine =
            serde_json::from_value(value).with_context(|| format!("{}: bad step line", at()))?;
        steps.push(step);
    }
    steps.sort_by_key(|s| s.step);
    Ok(steps)
}

/// The first line of a Slurm job's output that contains `error:`, trimmed and cut to 200
/// characters.
pub(crate) fn first_error_line(job_out: &str) -> Option<String> {
    let line = job_out.lines().find(|l| l.contains("error:"))?.trim();
    Some(line.chars().take(200).collect())
}

/// What one run's folder holds.
#[derive(Debug, Default)]
pub(crate) struct RunFiles {
    /// The folder exists and holds at least one entry.
    pub wrote_anything: bool,
    /// `run.json`, when present.
    pub info: Option<RunInfo>,
    /// The step lines of `metrics.jsonl` (empty when it is absent).
    pub steps: Vec<StepLine>,
    /// The first `error:` line of `job.out`.
    pub error_line: Option<String>,
}

/// Reads `run.json`, `metrics.jsonl` and `job.out` of the run folder `dir`, each if present.
///
/// # Errors
/// A present `run.json` or `metrics.jsonl` that cannot be read or parsed (named in the error).
pub(crate) fn read_run(dir: &Path) -> Result<RunFiles> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(RunFiles::default());
    };
    let mut files = RunFiles {
        wrote_anything: entries.next().is_some(),
        ..RunFiles::default()
    };
    let run_json = dir.join("run.json");
    if let Some(text) = read_if_present(&run_json)? {
        let info = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid run file", run_json.display()))?;
        files.info = Some(info);
    }
    let metrics = dir.join("metrics.jsonl");
    if let Some(text) = read_if_present(&metrics)? {
        files.steps = parse_metrics(&text, &metrics)?;
    }
    if let Ok(bytes) = std::fs::read(dir.join("job.out")) {
        files.error_line = first_error_line(&String::from_utf8_lossy(&bytes));
    }
    Ok(files)
}

/// The text of `path`, or `None` when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
