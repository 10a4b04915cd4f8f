//! The training loop. It composes model, optimizer, data and metrics and owns nothing else.
//!
//! One optimizer step over a global batch of G sequences, split into `accum = G / (B · dp)`
//! micro-batches of B sequences:
//!   (a) for each micro-batch: forward + backward, gradients accumulated, each token's loss
//!       weighted by 1/(G·T) so the sum is the mean over the global batch;
//!   (b) global gradient norm, clip; (c) AdamW at the scheduled learning rate.
//! Validation runs at step 0, every `train.val_every` steps and at the last step.

use crate::backend::ledger::MemCategory;
use crate::backend::prelude::*;
use crate::backend::Region;
use crate::checkpoint::hf;
use crate::comm::{AsyncComm, Communicator};
use crate::config::{Config, OnNonFinite};
use crate::data::{EvalWindows, SamplerKind, TokenData, TrainSampler};
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use crate::optim::{clip, AdamW, AdamWConfig, LrSchedule};
use crate::parallel::dp::{self, DpReducer};
use crate::parallel::groups::Groups;
use crate::parallel::pipeline::{self, Links};
use crate::parallel::shard::{repad, StageLayout};
use crate::parallel::stage::{OnReady, StageActs, StageModel, StageScratch};
use crate::parallel::zero::ZeroShard;
use crate::parallel::{check_grid, schedule_for, Coords, Grid, Tp};
use crate::runtime::Unanimous;
use crate::schedule::Action;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

mod ckpt;
mod driver;
mod dry_run;
mod evaluate;
mod guard;

pub use driver::run;
pub use dry_run::dry_run;
pub use evaluate::{evaluate, load_stage, weights_model, EvalJob, Weights};

/// Command-line options of `ferrotron train` that are not in the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Metrics JSONL path (default `<log.out_dir>/metrics.jsonl`).
    pub metrics: Option<PathBuf>,
    pub threads: usize,
    /// `--resume auto` or a checkpoint path.
    pub resume: Option<String>,
    /// Take over the checkpoint directory's lock even if its owner may be alive.
    pub force_unlock: bool,
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
    /// The run stopped early on SIGUSR1/SIGTERM after this many steps (saved when
    /// `checkpoint.dir` is set).
    pub stopped_at: Option<usize>,
    /// Median step time (ms) after the first two steps (all steps if there are no more).
    pub step_ms_median: Option<f64>,
}

/// Everything one rank needs to train its stage and shard, on backend `B`.
pub struct Trainer<B: Backend> {
    cfg: Config,
    pub model: StageModel<B>,
    /// The global model (vocabulary padded for TP) and its layout, for init and export.
    gcfg: Gpt2Config,
    glayout: ParamLayout,
    pub params: B::Buf,
    grads: B::Buf,
    /// Full optimizer state of the local parameters (no ZeRO, or dp = 1).
    opt: Option<AdamW<B>>,
    /// ZeRO-1: this rank's shard of the optimizer state (dp > 1 and `optim.zero = 1`).
    zero: Option<ZeroShard>,
    sched: LrSchedule,
    /// Training windows: on the stages that read tokens (first: inputs, last: targets); middle
    /// pipeline stages open no data.
    sampler: Option<TrainSampler>,
    /// The order of the training windows (on every rank, also those without data: rank 0
    /// writes it into checkpoints).
    sampler_kind: SamplerKind,
    /// Validation windows, on the same stages (None there without validation data).
    val: Option<EvalWindows>,
    slots: Vec<StageActs<B>>,
    scratch: StageScratch<B>,
    actions: Vec<Action>,
    /// Data-parallel gradient buckets, in the order they are reduced (see `parallel::dp`).
    buckets: Vec<Region>,
    accum: usize,
    /// This rank's place in the grid.
    grid: Grid,
    coords: Coords,
    /// World rank.
    rank: usize,
    /// Testing aid ([`guard::nan_grad_hook`]): (0-based step, rank), taken once.
    nan_grad_at: Option<(usize, usize)>,
}

/// Result of one optimizer step.
pub struct StepOut {
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f32,
    /// Seconds this rank waited for pipeline neighbours.
    pub idle_s: f64,
    /// `train.on_nonfinite = "skip"`: the step was discarded (nothing changed), and why.
    pub skipped: Option<String>,
}

/// What `reduce_and_update` did.
enum Update {
    Applied {
        loss: f32,
        norm: f64,
    },
    /// Nothing was changed: the loss or the gradient norm was not finite (the description).
    NonFinite(String),
}

impl<B: Backend> Trainer<B> {
    /// Validate inputs, load data, build and initialise this rank's stage (`init`: false leaves
    /// the weights zero, for a run that restores them from a checkpoint). No collective calls.
    pub fn new(cfg: &Config, world: usize, rank: usize, be: B, init: bool) -> Result<Self> {
        Self::build(cfg, world, rank, be, init, false)
    }

    /// As [`Trainer::new`] for evaluation only ([`Trainer::validate`]): no optimizer state, no
    /// gradient buffer, no training data, one activation slot.
    pub fn for_eval(cfg: &Config, world: usize, rank: usize, be: B, init: bool) -> Result<Self> {
        Self::build(cfg, world, rank, be, init, true)
    }

    fn build(
        cfg: &Config,
        world: usize,
        rank: usize,
        be: B,
        init: bool,
        eval: bool,
    ) -> Result<Self> {
        let grid = check_grid(cfg, world)?;
        let coords = grid.coords(rank);
        let gcfg = Gpt2Config::from_model_config(&cfg.model).with_tp_padding(grid.tp);
        let glayout = ParamLayout::new(&gcfg);
        let layout = StageLayout::new(&gcfg, &glayout, grid.tp, coords.tp, grid.pp, coords.pp)?;
        let host = if init {
            initial_params(cfg, &gcfg, &glayout, &layout)?
        } else {
            vec![0.0f32; layout.total]
        };
        let model = StageModel::new(gcfg, layout, be)
            .with_head_chunk_rows(cfg.train.head_chunk_rows)
            .with_recompute(cfg.train.recompute);
        let t = &cfg.train;
        let reads_tokens = coords.pp == 0 || coords.pp + 1 == grid.pp;
        let sampler_kind = match &cfg.data.sampler {
            Some(k) => SamplerKind::parse(k).context("data.sampler")?,
            None => SamplerKind::Feistel,
        };
        let (sampler, val) = if reads_tokens && eval {
            (None, open_val(cfg, gcfg.vocab_size)?)
        } else if reads_tokens {
            let train_files = TokenData::from_pattern(&cfg.data.train, crate::data::Split::Train)
                .context("data.train")?;
            let data =
                Arc::new(TokenData::open(&train_files, gcfg.vocab_size).context("data.train")?);
            let s =
                TrainSampler::new(data, t.seq_len, t.seed, sampler_kind).context("data.train")?;
            (Some(s), open_val(cfg, gcfg.vocab_size)?)
        } else {
            (None, None)
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
        let accum = t.global_batch_size / (t.micro_batch_size * grid.dp);
        let actions = schedule_for(cfg, grid.pp, accum, coords.pp);
        let lists: Vec<_> = (0..grid.pp)
            .map(|s| schedule_for(cfg, grid.pp, accum, s))
            .collect();
        let in_flight = crate::schedule::simulate(&lists, accum)?.max_in_flight[coords.pp];
        let ly = &model.layout;
        let zero = (!eval && cfg.optim.zero == 1 && grid.dp > 1)
            .then(|| ZeroShard::new(acfg, ly, grid.dp, coords.dp))
            .transpose()?;
        let (b, seq) = (t.micro_batch_size, t.seq_len);
        let be = &model.be;
        be.set_mem_category(MemCategory::Optimizer);
        let opt = match (eval, &zero) {
            (true, _) | (_, Some(_)) => None,
            (false, None) => Some(AdamW::for_entries(be, acfg, &ly.entries, ly.total)?),
        };
        be.set_mem_category(MemCategory::Params);
        let params = be.upload(&host)?;
        be.set_mem_category(MemCategory::Grads);
        let grads = be.zeros(if eval { 0 } else { ly.total })?;
        be.set_mem_category(MemCategory::Activations);
        let slots: Vec<StageActs<B>> = (0..if eval { 1 } else { in_flight.max(1) })
            .map(|_| model.acts(b, seq))
            .collect::<Result<_>>()?;
        be.set_mem_category(MemCategory::Workspace);
        let scratch = model.scratch(b, seq)?;
        if coords.dp == 0 && coords.tp == 0 {
            let first = &slots[0];
            log::info!(
                "activations saved per micro-batch on stage {}: {:.2} MiB (train.recompute = {})",
                coords.pp,
                (first.saved_floats(be) * 4) as f64 / (1u64 << 20) as f64,
                serde_json::to_value(cfg.train.recompute)?
                    .as_str()
                    .unwrap_or("?")
            );
        }
        let p = &cfg.parallel;
        let bucket_elems = (p.bucket_mb * (1u64 << 20) as f64 / 4.0) as usize;
        let buckets = dp::buckets(ly, bucket_elems, p.overlap_grad_reduce);
        Ok(Self {
            cfg: cfg.clone(),
            params,
            grads,
            opt,
            zero,
            slots,
            scratch,
            model,
            gcfg,
            glayout,
            sched,
            sampler,
            sampler_kind,
            val,
            actions,
            buckets,
            accum,
            grid,
            coords,
            rank,
            nan_grad_at: guard::nan_grad_hook(world),
        })
    }

    /// The peak of the buffers this rank's backend accounted, plus ZeRO-1's optimizer shards
    /// (which live on a host backend of their own); None where the backend does not account.
    pub fn mem_peak(&self) -> Option<crate::backend::ledger::MemBytes> {
        let mut m = self.model.be.mem_peak()?;
        if let Some(z) = &self.zero {
            let zp = z.mem_peak();
            for c in MemCategory::ALL {
                m.add(c, zp.get(c));
            }
        }
        Some(m)
    }

    /// One optimizer step (0-based `step`). The global batch is samples `step·G .. step·G + G`;
    /// micro-batch j of data-parallel rank r takes samples `step·G + (j·dp + r)·B ..` (+B), so
    /// every grid trains on the same global batch. Then, in order: tied
    /// `wte` gradient all-reduced over the embedding group, data-parallel reduction, global
    /// norm over all ranks counting each parameter once, clipping, AdamW.
    pub fn step(&mut self, step: usize, gr: &Groups) -> Result<StepOut> {
        let t = &self.cfg.train;
        let (b, seq, gbs) = (t.micro_batch_size, t.seq_len, t.global_batch_size);
        if t.debug_nan_at_step == Some(step) {
            let be = &self.model.be;
            let mut host = be.download(&self.params)?;
            host[0] = f32::NAN;
            be.upload_region(&mut self.params, 0, &host)?;
        }
        let scale = 1.0 / (gbs * seq) as f32;
        self.model.be.zero(&mut self.grads)?;
        let (dp, r) = (self.grid.dp, self.coords.dp);
        let base = (step * gbs) as u64;
        let sampler = &mut self.sampler;
        let mut fill = |j: usize, x: &mut [u32], y: &mut [u32]| {
            let s = sampler
                .as_mut()
                .context("a middle pipeline stage has no data")?;
            s.fill_batch(base + ((j * dp + r) * b) as u64, b, x, y)
        };
        let links = Links {
            tp: Tp::of(&gr.tp),
            pp: (self.grid.pp > 1).then_some(&gr.pp as &dyn AsyncComm),
        };
        let target = match &self.zero {
            Some(z) => dp::Target::ReduceScatter { chunk: z.chunk() },
            None => dp::Target::AllReduce,
        };
        let total = self.model.layout.total;
        let mut red = (dp > 1).then(|| DpReducer::new(&gr.dp, self.buckets.clone(), target, total));
        let run = {
            let be = &self.model.be;
            let mut hook = |g: &mut B::Buf, from: usize| match red.as_mut() {
                Some(r) => r.ready(be, g, from),
                None => Ok(()),
            };
            let overlap = dp > 1 && self.cfg.parallel.overlap_grad_reduce;
            pipeline::run(
                &self.model,
                &self.params,
                Some(&mut self.grads),
                &mut self.slots,
                &mut self.scratch,
                &self.actions,
                &mut fill,
                Some(scale),
                &links,
                overlap.then_some(&mut hook as &mut OnReady<B>),
            )?
        };
        let lr = self.sched.at(step);
        let (loss, norm, skipped) = match self.reduce_and_update(run.loss_sum, red, gr, lr, step)? {
            Update::Applied { loss, norm } => (loss, norm, None),
            Update::NonFinite(what) => match self.cfg.train.on_nonfinite {
                OnNonFinite::Stop => {
                    return Err(Unanimous(format!(
                        "{what} — training diverged or a fault corrupted the step (try a lower \
                         optim.lr, check the data, or set train.on_nonfinite = \"skip\")"
                    ))
                    .into())
                }
                OnNonFinite::Skip => (f32::NAN, f64::NAN, Some(what)),
            },
        };
        Ok(StepOut {
            loss,
            grad_norm: norm as f32,
            lr,
            idle_s: run.idle_s,
            skipped,
        })
    }

    /// Gradient reductions (finishing the data-parallel one `red` started during backward),
    /// norm, the non-finite guard, clipping and the AdamW update.
    fn reduce_and_update(
        &mut self,
        loss_sum: f64,
        red: Option<DpReducer>,
        gr: &Groups,
        lr: f32,
        step: usize,
    ) -> Result<Update> {
        let be = &self.model.be;
        let ly = &self.model.layout;
        if gr.emb.size() > 1 {
            let wte = ly.entries[ly.wte.context("embedding group without wte")?].clone();
            let r = Region {
                off: wte.offset,
                len: wte.len,
            };
            be.all_reduce_region(&gr.emb, &mut self.grads, r)?;
        }
        let dp = self.grid.dp;
        let mut shard = match red {
            Some(r) => r.finish(be, &mut self.grads)?,
            None => None,
        };
        if self.nan_grad_at == Some((step, self.rank)) {
            self.nan_grad_at = None;
            match shard.as_mut() {
                Some(g) => g[0] = f32::NAN,
                None => {
                    let mut host = be.download(&self.grads)?;
                    host[0] = f32::NAN;
                    be.upload_region(&mut self.grads, 0, &host)?;
                }
            }
        }
        let ss = match (&shard, &self.zero) {
            (Some(g), Some(z)) => z.sum_squares(g),
            _ if self.coords.dp == 0 => {
                let counted = ly.counted_regions();
                if counted.iter().map(|r| r.len).sum::<usize>() == ly.total {
                    be.sum_squares(&self.grads)? // everything counted: no host round trip
                } else {
                    be.sum_squares_ranges(&self.grads, &counted)?
                }
            }
            _ => 0.0,
        };
        let owns_loss = self.model.is_last() && self.coords.tp == 0;
        let loss_sum = if guard::inf_loss_hook() == Some(step) {
            f64::INFINITY // testing aid: an infinite loss with finite gradients
        } else {
            loss_sum
        };
        // The guard also looks at the gradients the norm does not count (replicas of tensors
        // counted on another rank): a fault there would otherwise reach the update unseen.
        let unseen = self.uncounted_sum_squares(shard.as_deref())?;
        let mut sums = [if owns_loss { loss_sum } else { 0.0 }, ss, unseen];
        if self.grid.world() > 1 {
            gr.world.all_reduce_sum_f64(&mut sums)?;
        }
        let loss = (sums[0] / (self.accum * dp) as f64) as f32;
        let mut norm = sums[1].sqrt();
        if !sums[2].is_finite() {
            norm = sums[2]; // reported as the gradient norm being non-finite
        }
        if !loss.is_finite() || !norm.is_finite() {
            let tensor = self.first_nonfinite_grad(shard.as_deref(), gr)?;
            let at = tensor.map_or(String::new(), |t| {
                format!(" (first non-finite gradient: {t})")
            });
            return Ok(Update::NonFinite(format!(
                "step {}: {}{at}",
                step + 1,
                guard::describe(loss, norm)
            )));
        }
        let coef = clip::clip_coef(norm, self.cfg.optim.grad_clip);
        match (shard, self.zero.as_mut()) {
            (Some(g), Some(z)) => z.apply(be, &mut self.params, g, coef, &gr.dp, lr)?,
            _ => {
                be.scale(&mut self.grads, coef)?;
                let opt = self.opt.as_mut().context("optimizer state missing")?;
                opt.step(be, &mut self.params, &self.grads, lr)?;
            }
        }
        Ok(Update::Applied { loss, norm })
    }

    /// Σ g² over the gradients this rank applies that the norm did not look at — replicas on
    /// dp ranks > 0, tensors counted on another TP rank, the uncounted part of a ZeRO shard —
    /// or 0 when the norm saw them all. Only its finiteness matters.
    fn uncounted_sum_squares(&self, shard: Option<&[f32]>) -> Result<f64> {
        let ly = &self.model.layout;
        if let (Some(g), Some(_)) = (shard, &self.zero) {
            return Ok(clip::sum_squares(g)); // the whole shard this rank applies
        }
        let counted: usize = ly.counted_regions().iter().map(|r| r.len).sum();
        if counted == ly.total && self.coords.dp == 0 {
            return Ok(0.0);
        }
        self.model.be.sum_squares(&self.grads)
    }

    /// The first gradient tensor holding a NaN or an infinity on any rank (collective over the
    /// world; downloads this rank's gradients — only on the non-finite path).
    fn first_nonfinite_grad(&self, shard: Option<&[f32]>, gr: &Groups) -> Result<Option<String>> {
        let ly = &self.model.layout;
        let host = self.model.be.download(&self.grads)?;
        let mut mine = guard::first_nonfinite(&ly.entries, &self.glayout, &host, 0..ly.total);
        if let (Some(g), Some(z)) = (shard, &self.zero) {
            let r = z.range();
            let n = r.len();
            let own = guard::first_nonfinite(&ly.entries, &self.glayout, &g[..n], r);
            mine = mine.into_iter().chain(own).min();
        }
        guard::agree_first(&gr.world, mine, &self.glayout)
    }

    /// Mean loss over the first `train.val_batches` validation batches (None without val data).
    /// Batch k is evaluated by data-parallel replica `k mod dp`, through the pipeline.
    pub fn validate(&mut self, gr: &Groups) -> Result<Option<f32>> {
        Ok(self.validate_f64(gr)?.map(|l| l as f32))
    }

    /// [`Trainer::validate`] in f64 (the sum over batches is f64).
    pub fn validate_f64(&mut self, gr: &Groups) -> Result<Option<f64>> {
        let t = &self.cfg.train;
        if t.val_every == 0 && t.val_batches == 0 {
            return Ok(None);
        }
        let b = self.cfg.train.micro_batch_size;
        let mine = self.val.as_ref().map_or(0, |w| {
            self.cfg.train.val_batches.min(w.num_full_batches(b)).max(1)
        });
        // Middle pipeline stages hold no data: they learn the batch count from the first stage.
        let k = if self.grid.pp > 2 {
            let mut v = [if self.coords.pp == 0 {
                mine as f64
            } else {
                0.0
            }];
            gr.pp.all_reduce_sum_f64_uncounted(&mut v);
            v[0] as usize
        } else {
            mine
        };
        let s = self.coords.pp;
        let mut actions = Vec::new();
        for i in (self.coords.dp..k).step_by(self.grid.dp) {
            if s > 0 {
                actions.push(Action::RecvAct(i));
            }
            actions.push(Action::Forward(i));
        }
        let w = self.val.as_ref();
        let mut fill = |i: usize, x: &mut [u32], y: &mut [u32]| {
            w.context("a middle pipeline stage has no data")?
                .batch(i, b, x, y)
        };
        let links = Links {
            tp: Tp::of(&gr.tp),
            pp: (self.grid.pp > 1).then_some(&gr.pp as &dyn AsyncComm),
        };
        let run = pipeline::run(
            &self.model,
            &self.params,
            None,
            &mut self.slots[..1],
            &mut self.scratch,
            &actions,
            &mut fill,
            None,
            &links,
            None,
        )?;
        let owns = self.model.is_last() && self.coords.tp == 0;
        let mut sum = [if owns { run.loss_sum } else { 0.0 }];
        if self.grid.world() > 1 {
            gr.world.all_reduce_sum_f64(&mut sum)?;
        }
        Ok(Some(sum[0] / k as f64))
    }

    fn tokens_per_step(&self) -> usize {
        self.cfg.train.global_batch_size * self.cfg.train.seq_len
    }
}

fn open_val(cfg: &Config, vocab: usize) -> Result<Option<EvalWindows>> {
    let t = &cfg.train;
    if t.val_every == 0 && t.val_batches == 0 {
        return Ok(None);
    }
    let files =
        TokenData::from_pattern(&cfg.data.val, crate::data::Split::Val).context("data.val")?;
    let d = Arc::new(TokenData::open(&files, vocab).context("data.val")?);
    let w = EvalWindows::new(d, t.seq_len).context("data.val")?;
    if w.num_full_batches(t.micro_batch_size) == 0 {
        bail!("data.val: {} sequences of {} tokens, fewer than one batch of train.micro_batch_size = {}", w.num_sequences(), t.seq_len, t.micro_batch_size);
    }
    Ok(Some(w))
}

/// This rank's initial weights: random from `train.seed` (a function of the global index, so
/// every grid starts from the same model), or its shard of `train.init_hf` (shape must match
/// [model]).
fn initial_params(
    cfg: &Config,
    gcfg: &Gpt2Config,
    glayout: &ParamLayout,
    layout: &StageLayout,
) -> Result<Vec<f32>> {
    let mut local = vec![0.0f32; layout.total];
    match &cfg.train.init_hf {
        Some(dir) => {
            let (hcfg, params) =
                hf::load(dir).with_context(|| format!("train.init_hf = {}", dir.display()))?;
            let want = Gpt2Config::from_model_config(&cfg.model);
            if hcfg != want {
                bail!(
                    "train.init_hf = {}: the model there ({}) differs from [model] ({}); set the [model] keys to match",
                    dir.display(),
                    describe(&hcfg),
                    describe(&want)
                );
            }
            let global = repad(&ParamLayout::new(&hcfg), &params, glayout);
            layout.extract(glayout, &global, &mut local);
        }
        None => layout.init(gcfg, cfg.train.seed, &mut local),
    }
    Ok(local)
}

fn describe(c: &Gpt2Config) -> String {
    format!(
        "vocab_size={} n_positions={} n_embd={} n_layer={} n_head={}",
        c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head
    )
}
