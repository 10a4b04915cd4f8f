//! The training loop. It composes model, optimizer, data and metrics and owns nothing else.
//!
//! One optimizer step over a global batch of G sequences, split into `accum = G / (B · dp)`
//! micro-batches of B sequences:
//!   (a) for each micro-batch: forward + backward, gradients accumulated, each token's loss
//!       weighted by 1/(G·T) so the sum is the mean over the global batch;
//!   (b) global gradient norm, clip; (c) AdamW at the scheduled learning rate.
//! Validation runs at step 0, every `train.val_every` steps and at the last step.

use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::checkpoint::hf;
use crate::comm::mpi::MpiComm;
use crate::comm::Communicator;
use crate::config::BackendKind;
use crate::config::Config;
use crate::data::{EvalWindows, TokenData, TrainSampler};
use crate::metrics::{MetricsWriter, StepMetrics};
use crate::model::gpt2::{Activations, Gpt2, Gpt2Config};
use crate::optim::{clip, AdamW, AdamWConfig, LrSchedule};
use crate::parallel::{Coords, Grid};
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Command-line options of `ferrotron train` that are not in the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Metrics JSONL path (default `<log.out_dir>/metrics.jsonl`).
    pub metrics: Option<PathBuf>,
    pub threads: usize,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub final_loss: f32,
    pub first_val_loss: Option<f32>,
    pub last_val_loss: Option<f32>,
    pub metrics_path: PathBuf,
    pub out_dir: PathBuf,
}

/// The grid for this world and config, with the checks that need the world size: dp·tp·pp =
/// world; tensor and pipeline parallelism are not implemented yet; the global batch splits
/// evenly into micro-batches over dp.
pub fn check_grid(cfg: &Config, world: usize) -> Result<Grid> {
    let p = &cfg.parallel;
    let grid = Grid::new(world, p.dp, p.tp, p.pp)?;
    if grid.tp > 1 || grid.pp > 1 {
        bail!(
            "grid dp={} tp={} pp={}: tensor and pipeline parallelism are not implemented in this version (parallel.tp and parallel.pp must be 1)",
            grid.dp,
            grid.tp,
            grid.pp
        );
    }
    let t = &cfg.train;
    if !t
        .global_batch_size
        .is_multiple_of(t.micro_batch_size * grid.dp)
    {
        bail!(
            "train.global_batch_size = {} is not divisible by train.micro_batch_size × dp = {} × {}",
            t.global_batch_size,
            t.micro_batch_size,
            grid.dp
        );
    }
    let accum = t.global_batch_size / (t.micro_batch_size * grid.dp);
    if let Some(m) = p.micro_batches {
        if m != accum {
            bail!(
                "parallel.micro_batches = {m} does not match train.global_batch_size / (train.micro_batch_size × dp) = {accum}"
            );
        }
    }
    Ok(grid)
}

/// Everything one rank needs to train, on backend `B`.
pub struct Trainer<B: Backend> {
    cfg: Config,
    pub model: Gpt2<B>,
    pub params: B::Buf,
    grads: B::Buf,
    /// Full optimizer state (no ZeRO, or dp = 1).
    opt: Option<AdamW<B>>,
    /// ZeRO-1: this rank's shard of the optimizer state (dp > 1 and `optim.zero = 1`).
    zero: Option<ZeroShard>,
    sched: LrSchedule,
    sampler: TrainSampler,
    val: Option<EvalWindows>,
    acts: Activations<B>,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    accum: usize,
    /// This rank's place in the grid.
    grid: Grid,
    coords: Coords,
}

/// ZeRO-1 (optimizer-state sharding over dp): the flat parameters, padded to dp·⌈N/dp⌉, are cut
/// into dp contiguous shards; this rank keeps AdamW's m and v for shard r only. A step
/// reduce-scatters the gradients (rank r gets the dp-sum of shard r), computes the global norm
/// from the shards' squared sums (one f64 all-reduce), clips and updates its shard, and
/// all-gathers the updated parameters. Host-staged, like the plain data-parallel path.
struct ZeroShard {
    opt: AdamW<Cpu>,
    cpu: Cpu,
    lo: usize,
    hi: usize,
    chunk: usize,
}

impl ZeroShard {
    fn new(
        cfg: AdamWConfig,
        layout: &crate::model::gpt2::ParamLayout,
        dp: usize,
        r: usize,
    ) -> Result<Self> {
        let chunk = layout.total.div_ceil(dp);
        let (lo, hi) = (
            (r * chunk).min(layout.total),
            ((r + 1) * chunk).min(layout.total),
        );
        let cpu = Cpu::new(1);
        let opt = AdamW::with_ranges(
            &cpu,
            cfg,
            chunk,
            crate::optim::adamw::shard_ranges(layout, lo, hi),
        )?;
        Ok(Self {
            opt,
            cpu,
            lo,
            hi,
            chunk,
        })
    }

    /// One sharded update; returns the global gradient norm (before clipping).
    fn update<B: Backend>(
        &mut self,
        be: &B,
        params: &mut B::Buf,
        grads: &B::Buf,
        comm: &dyn Communicator,
        clip_to: f32,
        lr: f32,
    ) -> Result<f64> {
        let dp = comm.size();
        let mut g = be.download(grads)?;
        g.resize(self.chunk * dp, 0.0);
        let mut shard_g = vec![0.0f32; self.chunk];
        comm.reduce_scatter_sum_f32(&g, &mut shard_g)?;
        let mut ss = [clip::sum_squares(&shard_g)];
        comm.all_reduce_sum_f64(&mut ss)?;
        let norm = ss[0].sqrt();
        clip::scale(&mut shard_g, clip::clip_coef(norm, clip_to));
        let host = be.download(params)?;
        let mut shard_p = host[self.lo..self.hi].to_vec();
        shard_p.resize(self.chunk, 0.0);
        self.opt.step(&self.cpu, &mut shard_p, &shard_g, lr)?;
        let mut full = vec![0.0f32; self.chunk * dp];
        comm.all_gather_f32(&shard_p, &mut full)?;
        full.truncate(host.len());
        *params = be.upload(&full)?;
        Ok(norm)
    }
}

/// Result of one optimizer step.
pub struct StepOut {
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f32,
}

impl<B: Backend> Trainer<B> {
    /// Validate inputs, load data, build and initialise the model. No collective calls.
    pub fn new(cfg: &Config, world: usize, rank: usize, be: B) -> Result<Self> {
        let grid = check_grid(cfg, world)?;
        let dp = grid.dp;
        let mcfg = Gpt2Config::from_model_config(&cfg.model);
        let model = Gpt2::with_backend(mcfg, be);
        let params = model.be.upload(&initial_params(cfg, &model.cfg)?)?;
        let t = &cfg.train;
        let train_files = TokenData::from_pattern(&cfg.data.train).context("data.train")?;
        let data = Arc::new(TokenData::open(&train_files, mcfg.vocab_size).context("data.train")?);
        let sampler = TrainSampler::new(data, t.seq_len, t.seed).context("data.train")?;
        let val = if t.val_every > 0 || t.val_batches > 0 {
            let files = TokenData::from_pattern(&cfg.data.val).context("data.val")?;
            let d = Arc::new(TokenData::open(&files, mcfg.vocab_size).context("data.val")?);
            let w = EvalWindows::new(d, t.seq_len).context("data.val")?;
            if w.num_full_batches(t.micro_batch_size) == 0 {
                bail!("data.val: {} sequences of {} tokens, fewer than one batch of train.micro_batch_size = {}", w.num_sequences(), t.seq_len, t.micro_batch_size);
            }
            Some(w)
        } else {
            None
        };
        let o = &cfg.optim;
        let acfg = AdamWConfig {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        };
        let sched = LrSchedule {
            lr: o.lr,
            min_lr: cfg.min_lr(),
            warmup_steps: o.warmup_steps,
            total_steps: t.steps,
        };
        let n = t.micro_batch_size * t.seq_len;
        let zero = (cfg.optim.zero == 1 && grid.dp > 1)
            .then(|| ZeroShard::new(acfg, &model.layout, grid.dp, grid.coords(rank).dp))
            .transpose()?;
        Ok(Self {
            cfg: cfg.clone(),
            grads: model.be.zeros(model.layout.total)?,
            opt: if zero.is_some() {
                None
            } else {
                Some(AdamW::new(&model.be, acfg, &model.layout)?)
            },
            zero,
            acts: model.activations(t.micro_batch_size, t.seq_len)?,
            model,
            params,
            sched,
            sampler,
            val,
            inputs: vec![0; n],
            targets: vec![0; n],
            accum: t.global_batch_size / (t.micro_batch_size * dp),
            grid,
            coords: grid.coords(rank),
        })
    }

    /// One optimizer step (0-based `step`). The global batch is samples `step·G .. step·G + G`;
    /// micro-batch j of data-parallel rank r takes samples `step·G + (j·dp + r)·B ..` (+B), so
    /// every grid trains on the same global batch. Gradients and the loss are summed over `dp`.
    pub fn step(&mut self, step: usize, dp_comm: Option<&dyn Communicator>) -> Result<StepOut> {
        let t = &self.cfg.train;
        let (b, seq) = (t.micro_batch_size, t.seq_len);
        let be = &self.model.be;
        if t.debug_nan_at_step == Some(step) {
            let mut host = be.download(&self.params)?;
            host[0] = f32::NAN;
            self.params = be.upload(&host)?;
        }
        let scale = 1.0 / (t.global_batch_size * seq) as f32;
        be.zero(&mut self.grads)?;
        let mut loss_sum = 0.0f64;
        let base = (step * t.global_batch_size) as u64;
        for j in 0..self.accum {
            let first = base + ((j * self.grid.dp + self.coords.dp) * b) as u64;
            self.sampler
                .fill_batch(first, b, &mut self.inputs, &mut self.targets);
            let (x, y) = (be.tokens(&self.inputs)?, be.tokens(&self.targets)?);
            let l = self
                .model
                .forward(&self.params, &x, Some(&y), Some(scale), &mut self.acts)?;
            self.model
                .backward(&self.params, &mut self.grads, &x, &mut self.acts)?;
            loss_sum += l as f64;
        }
        let lr = self.sched.at(step);
        let comm = dp_comm.filter(|c| c.size() > 1);
        if let Some(c) = comm {
            let mut l = [loss_sum];
            c.all_reduce_sum_f64(&mut l)?;
            loss_sum = l[0];
        }
        let loss = (loss_sum / (self.accum * self.grid.dp) as f64) as f32;
        if !loss.is_finite() {
            bail!("loss is {loss} at step {} — training diverged (try a lower optim.lr or check the data)", step + 1);
        }
        let norm = match (comm, self.zero.as_mut()) {
            (Some(c), Some(z)) => z.update(
                be,
                &mut self.params,
                &self.grads,
                c,
                self.cfg.optim.grad_clip,
                lr,
            )?,
            (c, _) => {
                if let Some(c) = c {
                    // Data-parallel reduction (host-staged): Σ over dp of each rank's gradients.
                    let mut host = be.download(&self.grads)?;
                    c.all_reduce_sum_f32(&mut host)?;
                    self.grads = be.upload(&host)?;
                }
                let norm = be.sum_squares(&self.grads)?.sqrt();
                be.scale(
                    &mut self.grads,
                    clip::clip_coef(norm, self.cfg.optim.grad_clip),
                )?;
                let opt = self.opt.as_mut().context("optimizer state missing")?;
                opt.step(be, &mut self.params, &self.grads, lr)?;
                norm
            }
        };
        Ok(StepOut {
            loss,
            grad_norm: norm as f32,
            lr,
        })
    }

    /// Mean loss over the first `train.val_batches` validation batches (None without val data).
    pub fn validate(&mut self) -> Result<Option<f32>> {
        let Some(w) = self.val.as_ref() else {
            return Ok(None);
        };
        let b = self.cfg.train.micro_batch_size;
        let k = self.cfg.train.val_batches.min(w.num_full_batches(b)).max(1);
        let mut sum = 0.0f64;
        for i in 0..k {
            w.batch(i, b, &mut self.inputs, &mut self.targets);
            let (x, y) = (
                self.model.be.tokens(&self.inputs)?,
                self.model.be.tokens(&self.targets)?,
            );
            sum += self
                .model
                .forward(&self.params, &x, Some(&y), None, &mut self.acts)?
                as f64;
        }
        Ok(Some((sum / k as f64) as f32))
    }

    fn tokens_per_step(&self) -> usize {
        self.cfg.train.global_batch_size * self.cfg.train.seq_len
    }
}

/// Random init from `train.seed`, or the weights of `train.init_hf` (shape must match [model]).
fn initial_params(cfg: &Config, mcfg: &Gpt2Config) -> Result<Vec<f32>> {
    match &cfg.train.init_hf {
        Some(dir) => {
            let (hcfg, params) =
                hf::load(dir).with_context(|| format!("train.init_hf = {}", dir.display()))?;
            if hcfg != *mcfg {
                bail!(
                    "train.init_hf = {}: the model there ({}) differs from [model] ({}); set the [model] keys to match",
                    dir.display(),
                    describe(&hcfg),
                    describe(mcfg)
                );
            }
            Ok(params)
        }
        None => {
            let layout = crate::model::gpt2::ParamLayout::new(mcfg);
            let mut p = vec![0.0f32; layout.total];
            layout.init(mcfg, cfg.train.seed, &mut p);
            Ok(p)
        }
    }
}

fn describe(c: &Gpt2Config) -> String {
    format!(
        "vocab_size={} n_positions={} n_embd={} n_layer={} n_head={}",
        c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head
    )
}

/// Run training on this rank, on the backend the config names. Set-up errors are agreed across
/// ranks before any work.
pub fn run(rt: &Runtime, cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    match cfg.train.backend {
        BackendKind::Cpu => run_on(rt, cfg, opts, Cpu::new(opts.threads)),
        BackendKind::Cuda => {
            let be = rt.agree(crate::backend::cuda::CudaBackend::with_options(
                rt.local_rank,
                cfg.train.precision,
            ))?;
            run_on(rt, cfg, opts, be)
        }
    }
}

fn run_on<B: Backend>(
    rt: &Runtime,
    cfg: &Config,
    opts: &TrainOptions,
    be: B,
) -> Result<TrainSummary> {
    let out_dir = cfg.log.out_dir.clone();
    let metrics_path = opts
        .metrics
        .clone()
        .unwrap_or_else(|| out_dir.join("metrics.jsonl"));
    let setup = Trainer::new(cfg, rt.size, rt.rank, be).and_then(|t| {
        let w = if rt.rank == 0 {
            Some(MetricsWriter::create(&metrics_path)?)
        } else {
            None
        };
        Ok((t, w))
    });
    let (mut tr, mut writer) = rt.agree(setup)?;
    // The data-parallel group: ranks with the same (tp, pp). Collective over the world.
    let c = tr.coords;
    let dp_comm = MpiComm::split(&rt.world, c.tp + tr.grid.tp * c.pp)?;
    let mcfg = tr.model.cfg;
    if rt.rank == 0 {
        log_setup(cfg, &tr);
    }
    let first_val = tr.validate()?;
    if let (Some(v), Some(w)) = (first_val, writer.as_mut()) {
        log::info!("step 0: val loss {v:.4}");
        w.write_val(0, v)?;
    }
    let summary = train_loop(cfg, &mut tr, writer.as_mut(), first_val, &dp_comm)?;
    if rt.rank == 0 && cfg.log.save_final {
        let dir = out_dir.join("final");
        let host = tr.model.be.download(&tr.params)?;
        hf::save(&dir, &mcfg, &host)
            .with_context(|| format!("saving final weights to {}", dir.display()))?;
        log::info!("final weights (Hugging Face format): {}", dir.display());
    }
    Ok(TrainSummary {
        metrics_path,
        out_dir,
        ..summary
    })
}

fn log_setup<B: Backend>(cfg: &Config, tr: &Trainer<B>) {
    let mcfg = tr.model.cfg;
    let g = tr.grid;
    log::info!(
        "model: {} parameters ({}), vocab padded to {}; grid dp={} tp={} pp={}; global batch {}×{} tokens, {} micro-batch(es) of {} per rank; backend {}",
        tr.model.layout.num_real_params(&mcfg),
        describe(&mcfg),
        mcfg.padded_vocab,
        g.dp,
        g.tp,
        g.pp,
        cfg.train.global_batch_size,
        cfg.train.seq_len,
        tr.accum,
        cfg.train.micro_batch_size,
        tr.model.be.name()
    );
}

fn train_loop<B: Backend>(
    cfg: &Config,
    tr: &mut Trainer<B>,
    mut writer: Option<&mut MetricsWriter>,
    first_val: Option<f32>,
    dp_comm: &dyn Communicator,
) -> Result<TrainSummary> {
    let steps = cfg.train.steps;
    let flops_per_token = tr.model.cfg.flops_per_token(
        tr.model.layout.num_real_params(&tr.model.cfg),
        cfg.train.seq_len,
    );
    let bar = progress_bar(writer.is_some(), steps);
    let (mut last_val, mut final_loss) = (first_val, f32::NAN);
    for s in 0..steps {
        let t0 = Instant::now();
        let out = tr.step(s, Some(dp_comm))?;
        let (dp_bytes, dp_secs) = dp_comm.stats().take();
        let dt = t0.elapsed().as_secs_f64();
        let is_val =
            (cfg.train.val_every > 0 && (s + 1) % cfg.train.val_every == 0) || s + 1 == steps;
        let val_loss = if is_val { tr.validate()? } else { None };
        last_val = val_loss.or(last_val);
        final_loss = out.loss;
        let tps = tr.tokens_per_step() as f64 / dt;
        let m = StepMetrics {
            step: s + 1,
            loss: out.loss,
            lr: out.lr,
            grad_norm: out.grad_norm,
            tokens_per_s: tps,
            step_ms: dt * 1e3,
            tokens: ((s + 1) * tr.tokens_per_step()) as u64,
            model_tflops: tps * flops_per_token / 1e12,
            val_loss,
            comm_bytes: [("dp", dp_bytes)].into(),
            comm_ms: [("dp", dp_secs * 1e3)].into(),
            compute_ms: (dt - dp_secs) * 1e3,
            bubble_ms: 0.0,
        };
        if let Some(w) = writer.as_deref_mut() {
            w.write(&m)?;
            report_step(&bar, &m, steps, cfg.log.every);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(TrainSummary {
        steps,
        final_loss,
        first_val_loss: first_val,
        last_val_loss: last_val,
        metrics_path: PathBuf::new(),
        out_dir: PathBuf::new(),
    })
}

fn progress_bar(is_rank0: bool, steps: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !is_rank0 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    let style =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

fn report_step(bar: &Option<indicatif::ProgressBar>, m: &StepMetrics, steps: usize, every: usize) {
    let val = m
        .val_loss
        .map(|v| format!(" | val loss {v:.4}"))
        .unwrap_or_default();
    let line = format!(
        "step {:>5}/{steps} | loss {:.4} | lr {:.2e} | grad norm {:.3} | {:.0} tok/s | {:.0} ms{val}",
        m.step, m.loss, m.lr, m.grad_norm, m.tokens_per_s, m.step_ms
    );
    match bar {
        Some(b) => {
            b.set_message(format!("loss {:.4}{val}", m.loss));
            b.inc(1);
            if m.val_loss.is_some() {
                b.println(line);
            }
        }
        None if m.step.is_multiple_of(every) || m.val_loss.is_some() || m.step == steps => {
            log::info!("{line}")
        }
        None => {}
    }
}
