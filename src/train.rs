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
use crate::config::BackendKind;
use crate::config::Config;
use crate::data::{EvalWindows, TokenData, TrainSampler};
use crate::metrics::{MetricsWriter, StepMetrics};
use crate::model::gpt2::{Activations, Gpt2, Gpt2Config};
use crate::optim::{clip, AdamW, AdamWConfig, LrSchedule};
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

/// Check the world against the configured grid. Only the 1×1×1 grid is implemented so far.
pub fn check_grid(cfg: &Config, world: usize) -> Result<usize> {
    let p = &cfg.parallel;
    let dp = p.dp.unwrap_or(world / (p.tp * p.pp).max(1)).max(1);
    if dp * p.tp * p.pp != world {
        bail!(
            "world size {world} does not match the grid parallel.dp × parallel.tp × parallel.pp = {dp} × {} × {} = {}",
            p.tp,
            p.pp,
            dp * p.tp * p.pp
        );
    }
    if world != 1 {
        bail!("grid dp={dp} tp={} pp={}: only the 1×1×1 grid is implemented in this version (run with one rank)", p.tp, p.pp);
    }
    let accum = cfg.train.global_batch_size / (cfg.train.micro_batch_size * dp);
    if let Some(m) = p.micro_batches {
        if m != accum {
            bail!(
                "parallel.micro_batches = {m} does not match train.global_batch_size / (train.micro_batch_size × dp) = {accum}"
            );
        }
    }
    Ok(dp)
}

/// Everything one rank needs to train, on backend `B`.
pub struct Trainer<B: Backend> {
    cfg: Config,
    pub model: Gpt2<B>,
    pub params: B::Buf,
    grads: B::Buf,
    opt: AdamW<B>,
    sched: LrSchedule,
    sampler: TrainSampler,
    val: Option<EvalWindows>,
    acts: Activations<B>,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    accum: usize,
    /// Next global sample index (the loader position).
    next_sample: u64,
}

/// Result of one optimizer step.
pub struct StepOut {
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f32,
}

impl<B: Backend> Trainer<B> {
    /// Validate inputs, load data, build and initialise the model. No collective calls.
    pub fn new(cfg: &Config, world: usize, be: B) -> Result<Self> {
        let dp = check_grid(cfg, world)?;
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
        Ok(Self {
            cfg: cfg.clone(),
            grads: model.be.zeros(model.layout.total)?,
            opt: AdamW::new(&model.be, acfg, &model.layout)?,
            acts: model.activations(t.micro_batch_size, t.seq_len)?,
            model,
            params,
            sched,
            sampler,
            val,
            inputs: vec![0; n],
            targets: vec![0; n],
            accum: t.global_batch_size / (t.micro_batch_size * dp),
            next_sample: 0,
        })
    }

    /// One optimizer step (0-based `step`).
    pub fn step(&mut self, step: usize) -> Result<StepOut> {
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
        for _ in 0..self.accum {
            self.sampler
                .fill_batch(self.next_sample, b, &mut self.inputs, &mut self.targets);
            self.next_sample += b as u64;
            let (x, y) = (be.tokens(&self.inputs)?, be.tokens(&self.targets)?);
            let l = self
                .model
                .forward(&self.params, &x, Some(&y), Some(scale), &mut self.acts)?;
            self.model
                .backward(&self.params, &mut self.grads, &x, &mut self.acts)?;
            loss_sum += l as f64;
        }
        let loss = (loss_sum / self.accum as f64) as f32;
        if !loss.is_finite() {
            bail!("loss is {loss} at step {} — training diverged (try a lower optim.lr or check the data)", step + 1);
        }
        let norm = be.sum_squares(&self.grads)?.sqrt();
        be.scale(
            &mut self.grads,
            clip::clip_coef(norm, self.cfg.optim.grad_clip),
        )?;
        let lr = self.sched.at(step);
        self.opt.step(be, &mut self.params, &self.grads, lr)?;
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
                cfg.train.tf32,
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
    let setup = Trainer::new(cfg, rt.size, be).and_then(|t| {
        let w = if rt.rank == 0 {
            Some(MetricsWriter::create(&metrics_path)?)
        } else {
            None
        };
        Ok((t, w))
    });
    let (mut tr, mut writer) = rt.agree(setup)?;
    let mcfg = tr.model.cfg;
    log::info!(
        "model: {} parameters ({}), vocab padded to {}; batch {}×{} tokens, {} micro-batch(es); backend {}",
        tr.model.layout.num_real_params(&mcfg),
        describe(&mcfg),
        mcfg.padded_vocab,
        cfg.train.global_batch_size,
        cfg.train.seq_len,
        tr.accum,
        tr.model.be.name()
    );
    let first_val = tr.validate()?;
    if let (Some(v), Some(w)) = (first_val, writer.as_mut()) {
        log::info!("step 0: val loss {v:.4}");
        w.write_val(0, v)?;
    }
    let summary = train_loop(cfg, &mut tr, writer.as_mut(), first_val)?;
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

fn train_loop<B: Backend>(
    cfg: &Config,
    tr: &mut Trainer<B>,
    mut writer: Option<&mut MetricsWriter>,
    first_val: Option<f32>,
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
        let out = tr.step(s)?;
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
