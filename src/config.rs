//! Run configuration: TOML files in `inputs/`, `--set section.key=value` overrides, and
//! validation up front with messages that name the offending key and the allowed values.
//!
//! Sections: `[model] [data] [train] [optim] [parallel] [comm] [checkpoint] [log] [runtime]`.
//! Unknown sections and keys are errors (serde `deny_unknown_fields`), so a typo never silently falls back to a default.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole run configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    #[serde(default)]
    pub data: DataConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub parallel: ParallelConfig,
    #[serde(default)]
    pub comm: CommConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// How the run watches itself (`comm::flight`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Seconds a rank may go without progress (a completed communication, a step) before its
    /// watchdog writes `<log.out_dir>/flight/rank<R>.jsonl` and ends the job; 0 turns it off.
    /// Unset: 900 s until three steps are done, then max(120 s, 20 × the slowest of them).
    #[serde(default)]
    pub watchdog_s: Option<f64>,
}

/// GPT-2 shape. `vocab_size` is the real vocabulary (50257 for GPT-2's BPE); the model pads it
/// internally to a multiple of 64 and masks the padding out of softmax and loss.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Maximum sequence length (rows of the learned position table `wpe`).
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
}

/// Token shards in llm.c's format: a file, a folder (a `prepare-data` output: its split), a
/// `manifest.json`, or `dir/prefix_*.bin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default = "default_train_data")]
    pub train: String,
    #[serde(default = "default_val_data")]
    pub val: String,
    /// Order of the training windows in an epoch: "feistel" (O(1) memory; new runs' default)
    /// or "shuffle" (Fisher–Yates, as before samplers were versioned). A resumed run takes its
    /// checkpoint's; setting another one is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Sequences per micro-batch on one data-parallel rank.
    pub micro_batch_size: usize,
    /// Sequences per optimizer step over all data-parallel ranks.
    pub global_batch_size: usize,
    pub seq_len: usize,
    /// Run validation every this many steps (and at the last step); 0 disables it.
    #[serde(default)]
    pub val_every: usize,
    /// Validation batches (each `micro_batch_size` sequences) per validation run.
    #[serde(default = "default_val_batches")]
    pub val_batches: usize,
    /// Start from a Hugging Face GPT-2 directory instead of random init.
    #[serde(default)]
    pub init_hf: Option<PathBuf>,
    /// Compute backend: "cpu" (default) or "cuda".
    #[serde(default)]
    pub backend: BackendKind,
    /// CUDA GEMM precision: "fp32" (exact, default), "tf32" (tensor cores, ~1e-3 relative
    /// error per product) or "bf16" (operands rounded to bf16, fp32 accumulation).
    #[serde(default)]
    pub precision: Precision,
    /// CUDA: flash attention (no `[T, T]` probabilities stored; head size ≤ 128). Off by
    /// default until its kernels have been checked on a GPU.
    #[serde(default)]
    pub flash_attention: bool,
    /// CUDA: the MLP's GELU in cuBLASLt GEMM epilogues (`c_fc` writes `gelu(pre)` and `pre`;
    /// the projection's input gradient comes out multiplied by `gelu'(pre)`). Off by default
    /// until checked on a GPU; where cuBLASLt refuses the epilogue, a warning and the separate
    /// GELU kernels.
    #[serde(default)]
    pub fuse_gelu: bool,
    /// CPU backend: who computes the matrix products — "auto" (a system BLAS library if one
    /// loads: `$FERROTRON_BLAS`, else searched by name, MKL first on Intel CPUs and OpenBLAS
    /// first elsewhere; else the built-in kernels), "blas" (a system BLAS or an error) or
    /// "builtin" (the `gemm` crate). Unset: `$FERROTRON_CPU_GEMM`, else "auto".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_gemm: Option<GemmChoice>,
    /// Rows of the LM head (logits, cross-entropy and their backward) computed at once on the
    /// last stage; 0 = automatic (a logits chunk of about 512 MiB).
    #[serde(default)]
    pub head_chunk_rows: usize,
    /// Activation recomputation: "none" keeps every activation backward needs; "selective"
    /// recomputes attention's probabilities (Megatron's selective recomputation; GELU is
    /// always recomputed); "full" keeps only each block's output and reruns the block's
    /// forward before its backward. Gradients are bitwise the same.
    #[serde(default)]
    pub recompute: Recompute,
    /// What a step whose loss or global gradient norm is not finite does (checked before
    /// clipping and the update): "stop" (default) ends every rank with the step, what was
    /// non-finite and the first such gradient tensor; "skip" discards the step — weights,
    /// optimizer state, learning-rate schedule and data position stay as if it had not been
    /// taken — logs it, counts it in the metrics and runs it again on the same batch.
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
    /// With `on_nonfinite = "skip"`: more discarded steps than this in one run stop it (a batch
    /// that is non-finite every time it runs stops after this many tries).
    #[serde(default = "default_max_skipped")]
    pub max_skipped_steps: usize,
    /// Testing aid (not for users): make the parameters NaN at this 0-based step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_nan_at_step: Option<usize>,
}

/// See [`TrainConfig::on_nonfinite`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    #[default]
    Stop,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "default_lr")]
    pub lr: f32,
    /// Floor of the cosine decay.
    #[serde(default)]
    pub min_lr: Option<f32>,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_wd")]
    pub weight_decay: f32,
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    #[serde(default = "default_clip")]
    pub grad_clip: f32,
    /// ZeRO stage (0 or 1).
    #[serde(default)]
    pub zero: u8,
}

/// Precision of the GEMMs on the CUDA backend (everything else is fp32).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Bf16,
}

impl CommBackend {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Nccl => "nccl",
            Self::MpiCudaAware => "mpi-cuda-aware",
            Self::MpiStaged => "mpi-staged",
        }
    }
}

/// Which compute backend runs the model.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Cpu,
    Cuda,
}

/// Which GEMM implementation the CPU backend uses (`train.cpu_gemm`, `FERROTRON_CPU_GEMM`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmChoice {
    /// A system BLAS if one is found (`backend::cpu::blas::search_list` or `FERROTRON_BLAS`), else the
    /// built-in kernels.
    #[default]
    Auto,
    /// A system BLAS, or an error if none loads.
    Blas,
    /// The `gemm` crate, always.
    Builtin,
}

impl std::str::FromStr for GemmChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "blas" => Ok(Self::Blas),
            "builtin" => Ok(Self::Builtin),
            other => anyhow::bail!("unknown CPU GEMM {other:?}: expected auto, blas or builtin"),
        }
    }
}

/// `train.recompute`: which activations backward recomputes instead of keeping.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    #[default]
    None,
    Selective,
    Full,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Gpipe,
    #[serde(rename = "1f1b")]
    OneFOneB,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelConfig {
    /// Data-parallel size; inferred as world / (tp * pp) when omitted.
    #[serde(default)]
    pub dp: Option<usize>,
    #[serde(default = "one")]
    pub tp: usize,
    #[serde(default = "one")]
    pub pp: usize,
    /// Micro-batches per step; derived as global / (micro_batch_size * dp), checked if given.
    #[serde(default)]
    pub micro_batches: Option<usize>,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Start each data-parallel gradient bucket's reduction during backward, as soon as its
    /// gradients are final (true), or all of them after backward (false).
    #[serde(default = "yes")]
    pub overlap_grad_reduce: bool,
    /// Target bucket size in MiB of f32 gradients (buckets hold whole layers); a size above the
    /// stage's gradients with `overlap_grad_reduce = false` gives one reduction after backward.
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
}

/// How the groups move backend buffers (README.md "GPUs": `comm.backend`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommConfig {
    /// "auto" (default), "nccl", "mpi-cuda-aware" or "mpi-staged"; the choice is logged at start.
    #[serde(default)]
    pub backend: CommBackend,
}

/// The requested transport for collectives and pipeline messages on backend buffers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CommBackend {
    /// NCCL where every rank has a GPU of its own, else CUDA-aware MPI where the MPI library
    /// supports it, else MPI through host memory. On the CPU backend: MPI on host memory.
    #[default]
    Auto,
    Nccl,
    MpiCudaAware,
    MpiStaged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint directory; unset or empty: no checkpoints.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Save every this many steps; 0 saves only at the end (when `dir` is set).
    #[serde(default)]
    pub every: usize,
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Write checkpoint files in a background thread while training goes on (false: the step
    /// waits until the checkpoint is complete).
    #[serde(default = "yes")]
    pub background: bool,
    /// A save that fails (full or read-only disk, ...): "stop" (default; every rank exits 1
    /// with the file and cause) or "continue" (warn and train on without that checkpoint).
    /// Either way the previous checkpoint and `latest` stay intact.
    #[serde(default)]
    pub on_error: OnSaveError,
}

/// See [`CheckpointConfig::on_error`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnSaveError {
    #[default]
    Stop,
    Continue,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Run directory: metrics, loss plot and final weights go here.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Log a line every this many steps (when no progress bar is shown).
    #[serde(default = "one")]
    pub every: usize,
    /// Write `<out_dir>/loss.png` at the end.
    #[serde(default = "yes")]
    pub plot: bool,
    /// Write the final weights as a Hugging Face directory `<out_dir>/final`.
    #[serde(default = "yes")]
    pub save_final: bool,
    /// Time every backend op (`backend::profile`): each step's metrics get `ops` (ms and calls
    /// per op on this rank; on a GPU, time on the compute stream) and the log a summary at the
    /// end. Off by default: on a GPU it records two events per op.
    #[serde(default)]
    pub profile_ops: bool,
    /// A machine profile (`inputs/machines/*.toml`): the run logs `ferrotron plan`'s predicted
    /// step time for its grid at start, and the measured median step beside it at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<PathBuf>,
}

fn default_vocab() -> usize {
    50257
}
fn default_train_data() -> String {
    "data/fortunes/train_*.bin".into()
}
fn default_val_data() -> String {
    "data/fortunes/val_*.bin".into()
}
fn default_max_skipped() -> usize {
    5
}
fn default_seed() -> u64 {
    1337
}
fn default_val_batches() -> usize {
    8
}
fn default_lr() -> f32 {
    6e-4
}
fn default_wd() -> f32 {
    0.1
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.95
}
fn default_eps() -> f32 {
    1e-8
}
fn default_clip() -> f32 {
    1.0
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_bucket_mb() -> f64 {
    25.0
}
fn default_schedule() -> Schedule {
    Schedule::OneFOneB
}
fn default_keep() -> usize {
    2
}
fn default_out_dir() -> PathBuf {
    PathBuf::from("runs/default")
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: default_train_data(),
            val: default_val_data(),
            sampler: None,
        }
    }
}
impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            min_lr: None,
            warmup_steps: 0,
            weight_decay: default_wd(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            grad_clip: default_clip(),
            zero: 0,
        }
    }
}
impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            dp: None,
            tp: 1,
            pp: 1,
            micro_batches: None,
            schedule: default_schedule(),
            overlap_grad_reduce: true,
            bucket_mb: default_bucket_mb(),
        }
    }
}
impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: None,
            every: 0,
            keep_last: default_keep(),
            background: true,
            on_error: OnSaveError::Stop,
        }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Self {
            out_dir: default_out_dir(),
            every: 1,
            plot: true,
            save_final: true,
            profile_ops: false,
            machine: None,
        }
    }
}

/// Parse one `--set section.key=value` override into the TOML document. The value is read as
/// a TOML literal (number, bool, quoted string, array); anything else is taken as a string.
pub fn apply_override(doc: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set {spec:?}: expected section.key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        bail!("--set {spec:?}: the key must be section.key (e.g. train.steps=10)");
    }
    let value = parse_value(raw.trim());
    let section = doc
        .entry(parts[0].to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let table = section
        .as_table_mut()
        .with_context(|| format!("--set {spec:?}: `{}` is not a section", parts[0]))?;
    table.insert(parts[1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl Config {
    /// Read `path`, apply `--set` overrides in order, deserialize and validate.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_str_with_overrides(&text, overrides)
            .with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parse TOML text, apply overrides, deserialize, validate.
    pub fn from_str_with_overrides(text: &str, overrides: &[String]) -> Result<Self> {
        let mut doc: toml::Table = text.parse().map_err(one_line)?;
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let mut cfg: Config = Config::deserialize(toml::Value::Table(doc)).map_err(one_line)?;
        // `checkpoint.dir = ""` (e.g. `--set checkpoint.dir=""`) turns checkpoints off.
        if cfg
            .checkpoint
            .dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            cfg.checkpoint.dir = None;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that do not depend on the world size. Each error names the key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        positive("model.vocab_size", m.vocab_size)?;
        positive("model.n_positions", m.n_positions)?;
        positive("model.n_embd", m.n_embd)?;
        positive("model.n_layer", m.n_layer)?;
        positive("model.n_head", m.n_head)?;
        if m.vocab_size > 65536 {
            bail!(
                "model.vocab_size = {} exceeds 65536 (token shards store uint16)",
                m.vocab_size
            );
        }
        if !m.n_embd.is_multiple_of(m.n_head) {
            bail!(
                "model.n_embd = {} is not divisible by model.n_head = {}",
                m.n_embd,
                m.n_head
            );
        }
        if let Some(w) = self.runtime.watchdog_s {
            if !(w.is_finite() && w >= 0.0) {
                bail!("runtime.watchdog_s = {w} must be a number >= 0 (0 turns the watchdog off)");
            }
        }
        if let Some(k) = &self.data.sampler {
            if !SAMPLERS.contains(&k.as_str()) {
                bail!("data.sampler: unknown sampler {k:?} (use \"feistel\" or \"shuffle\")");
            }
        }
        check_model_dims(
            "[model]",
            m.vocab_size,
            m.n_positions,
            m.n_embd,
            m.n_layer,
            m.n_head,
        )?;
        positive("train.steps", t.steps)?;
        positive("train.micro_batch_size", t.micro_batch_size)?;
        positive("train.global_batch_size", t.global_batch_size)?;
        positive("train.seq_len", t.seq_len)?;
        if t.seq_len > m.n_positions {
            bail!(
                "train.seq_len = {} exceeds model.n_positions = {}",
                t.seq_len,
                m.n_positions
            );
        }
        if !t.global_batch_size.is_multiple_of(t.micro_batch_size) {
            bail!(
                "train.global_batch_size = {} is not a multiple of train.micro_batch_size = {}",
                t.global_batch_size,
                t.micro_batch_size
            );
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr >= 0.0) {
            bail!("optim.lr = {} must be a finite number >= 0", o.lr);
        }
        if let Some(min) = o.min_lr {
            if !(min.is_finite() && min >= 0.0 && min <= o.lr) {
                bail!("optim.min_lr = {min} must be in [0, optim.lr = {}]", o.lr);
            }
        }
        for (k, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("{k} = {v} must be in [0, 1)");
            }
        }
        if o.eps.is_nan() || o.eps <= 0.0 {
            bail!("optim.eps = {} must be > 0", o.eps);
        }
        if o.grad_clip.is_nan()
            || o.grad_clip < 0.0
            || o.weight_decay.is_nan()
            || o.weight_decay < 0.0
        {
            bail!("optim.grad_clip and optim.weight_decay must be >= 0");
        }
        if o.zero > 1 {
            bail!("optim.zero = {}: allowed values are 0 and 1", o.zero);
        }
        positive("parallel.tp", self.parallel.tp)?;
        positive("parallel.pp", self.parallel.pp)?;
        if let Some(dp) = self.parallel.dp {
            positive("parallel.dp", dp)?;
        }
        positive("checkpoint.keep_last", self.checkpoint.keep_last)?;
        if self.train.backend == BackendKind::Cpu
            && matches!(
                self.comm.backend,
                CommBackend::Nccl | CommBackend::MpiCudaAware
            )
        {
            bail!(
                "comm.backend = {:?} needs train.backend = \"cuda\" (the CPU backend uses \"auto\" or \"mpi-staged\")",
                self.comm.backend.name()
            );
        }
        if self.train.flash_attention && self.train.backend != BackendKind::Cuda {
            bail!("train.flash_attention = true needs train.backend = \"cuda\" (the CPU backend materialises attention)");
        }
        if self.train.cpu_gemm.is_some() && self.train.backend != BackendKind::Cpu {
            bail!("train.cpu_gemm is set but train.backend is not \"cpu\": it chooses the CPU backend's GEMM provider");
        }
        if self.train.fuse_gelu && self.train.backend != BackendKind::Cuda {
            bail!("train.fuse_gelu = true needs train.backend = \"cuda\" (it fuses GELU into cuBLASLt GEMMs)");
        }
        let mb = self.parallel.bucket_mb;
        if !(mb.is_finite() && mb > 0.0) {
            bail!("parallel.bucket_mb = {mb} must be a number > 0 (MiB per gradient bucket)");
        }
        positive("log.every", self.log.every)?;
        Ok(())
    }

    /// Floor of the cosine schedule: `optim.min_lr`, default lr / 10.
    pub fn min_lr(&self) -> f32 {
        self.optim.min_lr.unwrap_or(self.optim.lr * 0.1)
    }

    /// The config as TOML text (stored in checkpoints and run directories).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serialising config")
    }
}

/// toml's messages span lines ("...\nin `train.steps`"); one line reads better in logs.
fn one_line(e: toml::de::Error) -> anyhow::Error {
    let msg = e.to_string();
    anyhow::anyhow!("{}", msg.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn positive(key: &str, v: usize) -> Result<()> {
    if v == 0 {
        bail!("{key} must be > 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[model]
n_positions = 64
n_embd = 32
n_layer = 2
n_head = 4
[train]
steps = 3
micro_batch_size = 2
global_batch_size = 4
seq_len = 16
"#;

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        format!(
            "{:#}",
            Config::from_str_with_overrides(text, &o).unwrap_err()
        )
    }

    #[test]
    fn parses_and_overrides() {
        let o = vec!["train.steps=7".to_string(), "optim.lr=0.01".to_string()];
        let c = Config::from_str_with_overrides(BASE, &o).unwrap();
        assert_eq!(c.train.steps, 7);
        assert!((c.optim.lr - 0.01).abs() < 1e-9);
        assert_eq!(c.parallel.schedule, Schedule::OneFOneB);
        let c = Config::from_str_with_overrides(BASE, &["parallel.schedule=gpipe".into()]).unwrap();
        assert_eq!(c.parallel.schedule, Schedule::Gpipe);
    }

    #[test]
    fn empty_checkpoint_dir_turns_checkpoints_off() {
        let set = |v: &str| vec![format!("checkpoint.dir={v}")];
        let c = Config::from_str_with_overrides(BASE, &set("\"ck\"")).unwrap();
        assert_eq!(c.checkpoint.dir.as_deref(), Some(Path::new("ck")));
        let c = Config::from_str_with_overrides(BASE, &set("\"\"")).unwrap();
        assert_eq!(c.checkpoint.dir, None);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(BASE, &["train.stepz=3"]);
        assert!(e.contains("stepz") && e.contains("steps"), "{e}");
        let e = err(BASE, &["bogus.x=3"]);
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let e = err(&BASE.replace("n_layer = 2\n", ""), &[]);
        assert!(e.contains("n_layer"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(BASE, &["train.steps=abc"]);
        assert!(e.contains("steps") || e.contains("abc"), "{e}");
        let e = err(BASE, &["parallel.schedule=zigzag"]);
        assert!(e.contains("gpipe") && e.contains("1f1b"), "{e}");
        let e = err(BASE, &["model.n_head=5"]);
        assert!(e.contains("model.n_head"), "{e}");
        let e = err(BASE, &["train.global_batch_size=5"]);
        assert!(e.contains("train.global_batch_size"), "{e}");
        for v in ["0", "-1", "nan"] {
            let e = err(BASE, &[&format!("parallel.bucket_mb={v}")]);
            assert!(e.contains("parallel.bucket_mb"), "{e}");
        }
    }

    #[test]
    fn comm_backend_names_and_cpu_limits() {
        let c = Config::from_str_with_overrides(BASE, &[]).unwrap();
        assert_eq!(c.comm.backend, CommBackend::Auto);
        let c =
            Config::from_str_with_overrides(BASE, &["comm.backend=\"mpi-staged\"".into()]).unwrap();
        assert_eq!(c.comm.backend, CommBackend::MpiStaged);
        for b in ["nccl", "mpi-cuda-aware"] {
            let e = err(BASE, &[&format!("comm.backend=\"{b}\"")]);
            assert!(e.contains("comm.backend") && e.contains(b), "{e}");
            let ok = [&format!("comm.backend=\"{b}\""), "train.backend=\"cuda\""];
            let o: Vec<String> = ok.iter().map(|s| s.to_string()).collect();
            let c = Config::from_str_with_overrides(BASE, &o).unwrap();
            assert_eq!(c.comm.backend.name(), b);
        }
        let e = err(BASE, &["train.flash_attention=true"]);
        assert!(e.contains("train.flash_attention"), "{e}");
        let e = err(BASE, &["train.fuse_gelu=true"]);
        assert!(e.contains("train.fuse_gelu"), "{e}");
        let e = err(BASE, &["comm.backend=\"gloo\""]);
        assert!(e.contains("comm") && e.contains("mpi-staged"), "{e}");
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::Config;

    /// Every config shipped in `inputs/` parses and validates.
    #[test]
    fn inputs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inputs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "expected the shipped configs in inputs/");
    }
}

/// The window orders `data.sampler` names (`data::SamplerKind`).
pub const SAMPLERS: [&str; 2] = ["feistel", "shuffle"];

/// Bounds of a GPT-2 shape (also of one read from a Hugging Face directory or a checkpoint):
/// every dimension in range, C divisible by NH, at most 2^40 parameters (the vocabulary padded
/// to a multiple of 64).
pub fn check_model_dims(
    what: &str,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
) -> Result<()> {
    let dims = [
        ("vocab_size", vocab_size, 1 << 22),
        ("n_positions", n_positions, 1 << 20),
        ("n_embd", n_embd, 1 << 16),
        ("n_layer", n_layer, 4096),
        ("n_head", n_head, 1 << 16),
    ];
    for (k, v, max) in dims {
        anyhow::ensure!(
            (1..=max).contains(&v),
            "{what}: {k} = {v} is outside 1..={max}"
        );
    }
    anyhow::ensure!(
        n_embd.is_multiple_of(n_head),
        "{what}: n_embd {n_embd} is not divisible by n_head {n_head}"
    );
    let (c, l) = (n_embd as u128, n_layer as u128);
    let padded = vocab_size.div_ceil(64) as u128 * 64;
    let params = (padded + n_positions as u128) * c + l * 12 * c * c;
    anyhow::ensure!(
        params <= 1 << 40,
        "{what}: {params} parameters is beyond 2^40"
    );
    Ok(())
}
