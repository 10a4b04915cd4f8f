//! Per-step metrics: a JSONL writer (one object per step) and throughput arithmetic.
//!
//! Throughput: `tokens_per_s = tokens in the global batch / step time`; model FLOP/s =
//! `tokens_per_s · flops_per_token` with llm.c's `6·N + 6·L·T·C` per token. MFU divides that by
//! the device's peak dense FLOP/s; the CPU backend has no standard peak, so CPU runs report
//! `model_tflops` (achieved) and no MFU.

use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One line of the metrics file.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    pub step_ms: f64,
    /// Tokens trained on so far (all ranks).
    pub tokens: u64,
    /// Achieved model TFLOP/s (llm.c FLOP convention).
    pub model_tflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
    /// Payload bytes per communication group in this step (`{"dp": …}`; tp, pp, emb later).
    pub comm_bytes: std::collections::BTreeMap<&'static str, u64>,
    /// Milliseconds spent in each group's calls in this step.
    pub comm_ms: std::collections::BTreeMap<&'static str, f64>,
    /// Step time outside communication calls (and outside pipeline waits).
    pub compute_ms: f64,
    /// Time a pipeline stage waited for its neighbours (0 until pipeline parallelism runs).
    pub bubble_ms: f64,
    /// With `log.profile_ops`: milliseconds and calls per backend op in this step (rank 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<crate::backend::profile::Profile>,
}

/// Appends JSON lines to a file, flushing each line (so a crash loses nothing written).
pub struct MetricsWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl MetricsWriter {
    /// Creates (truncates) `path`, making parent directories.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let f = File::create(path)
            .with_context(|| format!("cannot create metrics file {}", path.display()))?;
        Ok(Self {
            out: BufWriter::new(f),
            path: path.to_path_buf(),
        })
    }

    /// Continues the metrics of a resumed run: keeps the lines (steps, validation, checkpoint
    /// reports) of steps `..= step` already in `path` (if it exists) and appends after them.
    pub fn resume(path: &Path, step: usize) -> Result<Self> {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let mut w = Self::create(path)?;
        for line in old.lines() {
            // Step lines, validation lines and checkpoint reports of steps up to `step`.
            let s = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    let step = v.get("step");
                    step.or_else(|| v.get("checkpoint")?.get("step"))?.as_u64()
                });
            if s.is_some_and(|s| s as usize <= step) {
                writeln!(w.out, "{line}")?;
            }
        }
        w.out.flush()?;
        Ok(w)
    }

    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m)?;
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// A validation-only line (step 0, before training): `{"step": s, "val_loss": v}`.
    /// One extra JSON object line (e.g. a finished checkpoint).
    pub fn write_json(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.out, "{v}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn write_val(&mut self, step: usize, val_loss: f32) -> Result<()> {
        let line = serde_json::json!({ "step": step, "val_loss": val_loss });
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// This process's peak resident memory in bytes (`VmHWM` of `/proc/self/status`; None where
/// that file does not exist). Counts the pages of memory-mapped shards that were touched.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resuming at step 2 keeps step, validation and checkpoint lines up to step 2 only.
    #[test]
    fn peak_rss_is_read() {
        let rss = peak_rss_bytes().expect("VmHWM in /proc/self/status");
        assert!(rss > 1 << 20, "{rss}");
    }

    #[test]
    fn resume_keeps_lines_up_to_the_step() {
        let p =
            std::env::temp_dir().join(format!("ferrotron-metrics-{}.jsonl", std::process::id()));
        let lines = [
            r#"{"step":0,"val_loss":10.0}"#,
            r#"{"step":1,"loss":9.0}"#,
            r#"{"step":2,"loss":8.0}"#,
            r#"{"checkpoint":{"step":2,"bytes":1}}"#,
            r#"{"step":3,"loss":7.0}"#,
            r#"{"checkpoint":{"step":3,"bytes":1}}"#,
        ];
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let mut w = MetricsWriter::resume(&p, 2).unwrap();
        w.write_val(3, 6.5).unwrap();
        drop(w);
        let got = std::fs::read_to_string(&p).unwrap();
        let want = lines[..4].join("\n") + "\n" + r#"{"step":3,"val_loss":6.5}"# + "\n";
        assert_eq!(got, want);
        std::fs::remove_file(&p).unwrap();
    }
}
