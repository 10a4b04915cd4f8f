//! Command-line interface (clap). `main.rs` parses this and calls into the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// ferrotron: 3D-parallel GPT-2 training as one SPMD binary (start it with mpirun or srun).
#[derive(Debug, Parser)]
#[command(name = "ferrotron", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads per rank (default: $OMP_NUM_THREADS, else the cores available).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a GPT-2 from a TOML config (see inputs/).
    Train(TrainArgs),
    /// Turn text or JSONL files or folders (optionally gzip/zstd) into GPT-2 BPE token shards
    /// (llm.c format).
    PrepareData(PrepareArgs),
    /// Mean loss of a Hugging Face GPT-2 directory on a token shard.
    Eval(EvalArgs),
    /// Generate text from a Hugging Face GPT-2 directory (KV cache).
    Generate(GenerateArgs),
    /// Plot a metrics JSONL file as a loss-curve PNG.
    Plot(PlotArgs),
    /// Inspect, verify or export a sharded HDF5 checkpoint.
    Ckpt(CkptArgs),
    /// Scaling studies: summarise a study folder into summary.csv and plots.
    Study(StudyArgs),
    /// Before a run: per-rank memory (by category), communication per group and a predicted
    /// step time for every grid of a world size (or one grid), ranked; see README "Planning a run".
    Plan(PlanArgs),
    /// Under mpirun/srun: measure this machine (GEMM rate at the model's shapes, MPI latency and
    /// bandwidth within and across hosts, memory) and write a profile for `ferrotron plan`.
    BenchMachine {
        /// Where to write the profile, e.g. inputs/machines/local.toml.
        #[arg(long)]
        out: PathBuf,
        /// Measure the GEMMs and kernels at this config's model and micro-batch (default:
        /// GPT-2 small, micro-batch 4 × 256 tokens).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides of --config, `section.key=value`.
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
        sets: Vec<String>,
    },
    /// Measure the CPU GEMM providers (built-in, and every system BLAS library found) side by
    /// side: median GFLOP/s per shape over alternating rounds.
    BenchGemm {
        /// Product shapes MxNxK[:ta,tb] (default: 2048³ and GPT-2 small's products).
        #[arg(long = "shape", value_name = "MxNxK[:ta,tb]")]
        shapes: Vec<String>,
        /// Timed rounds per shape (after one warm-up).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Another CBLAS library to measure besides those auto would find (repeatable); an
        /// error if it does not load.
        #[arg(long = "blas", value_name = "PATH")]
        blas: Vec<PathBuf>,
        /// One JSON object per provider and shape instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// After a watchdog ended a run: read <out_dir>/flight/rank*.jsonl and say which rank held
    /// up which operation on which group.
    Diagnose {
        /// The run folder (log.out_dir).
        out_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Run configuration (TOML), e.g. inputs/tiny.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Per-step metrics JSONL (default: <log.out_dir>/metrics.jsonl).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Start from a Hugging Face GPT-2 directory (same as --set train.init_hf=DIR).
    #[arg(long, value_name = "DIR")]
    pub init_hf: Option<PathBuf>,
    /// Resume from a checkpoint: `auto` (the newest complete one under checkpoint.dir, or a
    /// fresh start when there is none) or a path (a step_N directory, or a checkpoint dir).
    /// Any grid can resume any checkpoint.
    #[arg(long, value_name = "auto|PATH")]
    pub resume: Option<String>,
    /// Take over checkpoint.dir's LOCK even when its owner may still run (a run on another
    /// host, or a live process). Stale locks (same Slurm job, dead process on this host) are
    /// taken over without it.
    #[arg(long)]
    pub force_unlock: bool,
    /// Set-up only: check the config, the grid, the communicators and that the data files
    /// exist, print one JSON line per rank (host, local rank, grid coordinates, the device it
    /// would use) and exit 0 without training. Checks an sbatch script before node-hours.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Run configuration (TOML), e.g. inputs/gpt2-124m.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Machine profile (TOML), e.g. inputs/machines/h100-sxm-node.toml.
    #[arg(long)]
    pub machine: PathBuf,
    /// World size.
    #[arg(long, conflicts_with = "nodes")]
    pub ranks: Option<usize>,
    /// Nodes (world = nodes × --gpus-per-node, default the profile's devices per node).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Ranks per node with --nodes.
    #[arg(long, requires = "nodes")]
    pub gpus_per_node: Option<usize>,
    /// Evaluate only this grid (with the config's micro-batch, schedule and ZeRO).
    #[arg(long, value_name = "DP,TP,PP")]
    pub grid: Option<String>,
    /// Rows of the ranked table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// One JSON object ({"grids": [...], "rejected": [...]}) instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CkptArgs {
    #[command(subcommand)]
    pub command: CkptCommand,
}

#[derive(Debug, Subcommand)]
pub enum CkptCommand {
    /// Grid, step and every tensor (shape, dtype, size) of a checkpoint.
    Inspect {
        /// A step_N directory, or a checkpoint dir (its `latest`).
        path: PathBuf,
    },
    /// Check completeness, every file, every checksum and every tensor's shape and place;
    /// exits non-zero naming the first bad file or tensor.
    Verify { path: PathBuf },
    /// Write the model as a Hugging Face GPT-2 directory (from any grid).
    Export {
        path: PathBuf,
        /// Output directory (config.json + model.safetensors).
        #[arg(long)]
        hf: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// Text, JSONL (*.jsonl, *.ndjson) or Parquet (*.parquet) files or folders (recursed;
    /// hidden, .dat and .u8 files are skipped); .gz and .zst files are decompressed.
    /// Repeatable. Under mpirun/srun the ranks share the files (same output for any count).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output folder for train_*.bin, val_*.bin and manifest.json (on a shared file system
    /// when several nodes run it).
    #[arg(long)]
    pub out: PathBuf,
    /// Every N-th document goes to the validation split.
    #[arg(long, default_value_t = 20)]
    pub val_every: usize,
    /// Tokens per shard file (the last shard of a split holds the rest).
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: usize,
    /// The JSONL field or Parquet column holding the document text.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Skip and count bad JSONL lines and Parquet rows (malformed, missing, null or
    /// non-string field, invalid UTF-8) instead of stopping at the first with its file and
    /// line or row.
    #[arg(long)]
    pub skip_bad: bool,
    /// Draw no progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Hugging Face GPT-2 directory (config.json + model.safetensors).
    #[arg(long, conflicts_with = "ckpt", required_unless_present = "ckpt")]
    pub hf: Option<PathBuf>,
    /// A training checkpoint written on any grid: a step_<N> directory, or a checkpoint.dir
    /// (its latest complete checkpoint).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Token shard: a file, a folder (its val_ shards) or dir/prefix_*.bin.
    #[arg(long)]
    pub data: String,
    /// Sequences per batch.
    #[arg(long)]
    pub batch: usize,
    /// Sequence length T.
    #[arg(long)]
    pub seq: usize,
    /// Evaluate only the first K batches (default: all full batches).
    #[arg(long)]
    pub batches: Option<usize>,
    /// Tensor-parallel ranks (under mpirun/srun; dp = world / (tp·pp) splits the batches).
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Pipeline stages.
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Print one JSON line {"loss": ..., "tokens": ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Hugging Face GPT-2 directory (config.json + model.safetensors).
    #[arg(long, conflicts_with = "ckpt", required_unless_present = "ckpt")]
    pub hf: Option<PathBuf>,
    /// A training checkpoint written on any grid: a step_<N> directory, or a checkpoint.dir.
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Prompt text (GPT-2 BPE); generation stops after the end-of-text token.
    #[arg(long, conflicts_with_all = ["prompt_ids", "prompts"], required_unless_present_any = ["prompt_ids", "prompts"])]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated (any vocabulary; no stop token).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompts")]
    pub prompt_ids: Option<Vec<u32>>,
    /// A batch of prompts, JSONL: one {"prompt": "..."} or {"prompt_ids": [...]} per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Then only among the most likely tokens whose probabilities sum to p (1 = all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Prompt i samples from ChaCha8(seed + i): the same tokens on every grid.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Tensor-parallel ranks (under mpirun/srun; dp = world / (tp·pp) splits the prompts).
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Pipeline stages.
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// One JSON object per prompt: {"index", "prompt", "prompt_ids", "ids", "text"}.
    #[arg(long)]
    pub json: bool,
    /// Log where each rank's generation time went, op by op (the backend's op profile).
    #[arg(long)]
    pub profile_ops: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Metrics JSONL written by `ferrotron train`.
    #[arg(long)]
    pub metrics: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct StudyArgs {
    #[command(subcommand)]
    pub command: StudyCommand,
}

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Summarise a study folder (made by scripts/scaling-study.sh): writes summary.csv,
    /// throughput.png, efficiency.png and breakdown.png into it; exits non-zero when a run
    /// failed or is missing (after writing them).
    Report {
        /// The study folder (holds study.json and one folder per run).
        dir: PathBuf,
        /// Leading steps of each run left out of the timings.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// A machine profile (inputs/machines/*.toml): adds `ferrotron plan`'s predicted
        /// tokens/s per run to summary.csv and as a line to throughput.png.
        #[arg(long)]
        machine: Option<PathBuf>,
    },
}
