//! Driving a training run: set-up (resume included), the step loop with metrics, checkpoints
//! and stop signals, and the final export.

use super::{ckpt, describe, TrainOptions, TrainSummary, Trainer};
use crate::backend::cpu::Cpu;
use crate::backend::ledger::{MemBytes, MemCategory};
use crate::backend::prelude::*;
use crate::checkpoint::hf;
use crate::checkpoint::lock::DirLock;
use crate::checkpoint::save::{Checkpointer, SavePolicy};
use crate::comm::flight::{FlightRecorder, Watchdog};
use crate::comm::link;
use crate::comm::Communicator;
use crate::config::{BackendKind, Config};
use crate::metrics::{MetricsWriter, StepMetrics};
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use crate::parallel::groups::{gather_facts, gather_weights, Groups};
use crate::parallel::shard::repad;
use crate::placement;
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Run training on this rank, on the backend the config names. Set-up errors are agreed across
/// ranks before any work.
pub fn run(rt: &Runtime, cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    match cfg.train.backend {
        BackendKind::Cpu => {
            let cpu = Cpu::resolved(cfg.train.cpu_gemm, opts.threads, rt.rank == 0);
            run_on(rt, cfg, opts, rt.agree(cpu)?)
        }
        BackendKind::Cuda => {
            let be = rt.agree(
                crate::backend::cuda::CudaBackend::with_options(rt.local_rank, cfg.train.precision)
                    .map(|b| {
                        b.with_flash_attention(cfg.train.flash_attention)
                            .with_fused_gelu(cfg.train.fuse_gelu)
                    }),
            )?;
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
    // A profile that does not load stops every rank before any work.
    let machine = rt.agree(
        cfg.log
            .machine
            .as_deref()
            .map(crate::plan::machine::Machine::load)
            .transpose(),
    )?;
    let setup = set_up(cfg, opts, rt, be, &metrics_path);
    let SetUp {
        mut tr,
        mut writer,
        start,
        lock: _lock,
    } = rt.agree(setup)?;
    let facts = gather_facts(&rt.world, &tr.model.be)?;
    let (plan, why) = rt.agree(link::resolve(cfg.comm.backend, &facts))?;
    let mut gr = rt.agree(Groups::new(&rt.world, tr.grid, rt.rank))?;
    let flight = Arc::new(FlightRecorder::new());
    gr.record(&flight, rt.rank);
    let watchdog = Watchdog::start(
        flight.clone(),
        cfg.runtime.watchdog_s.unwrap_or(WATCHDOG_START_S),
        out_dir.clone(),
        rt.rank,
    )?;
    record_placement(rt, cfg, &tr, opts.threads)?;
    // Not agreed: a failure aborts the job (see `Groups::connect`).
    gr.connect(plan, &tr.model.be)
        .context("setting up the communicators")?;
    let predicted_ms = machine
        .as_ref()
        .and_then(|m| crate::plan::evaluate(cfg, rt.size, m).ok().map(|c| (c, m)));
    if rt.rank == 0 {
        log_setup(cfg, &tr);
        if let Some((c, m)) = &predicted_ms {
            log::info!(
                "plan on {}: predicted {:.1} ms/step ({:.0} tokens/s, MFU {:.1}%)",
                m.machine.name,
                c.step_ms,
                c.tokens_per_s,
                100.0 * c.mfu
            );
        }
        log::info!(
            "comm: collectives {}, pipeline messages {} ({why})",
            plan.coll.name(),
            plan.p2p.name()
        );
    }
    let first_val = if start == 0 { tr.validate(&gr)? } else { None };
    take_stats(&gr);
    if let (Some(v), Some(w)) = (first_val, writer.as_mut()) {
        log::info!("step 0: val loss {v:.4}");
        w.write_val(0, v)?;
    }
    let mut ck = cfg.checkpoint.dir.as_ref().map(|dir| {
        let c = &cfg.checkpoint;
        let policy = SavePolicy {
            dir: dir.clone(),
            every: c.every,
            keep_last: c.keep_last,
            background: c.background,
            continue_on_error: c.on_error == crate::config::OnSaveError::Continue,
        };
        Checkpointer::new(policy, rt.rank).with_flight(flight.clone())
    });
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let run = Run {
        start,
        ckpt: ck.as_mut(),
        stop: &stop,
        rank: rt.rank,
        flight: &flight,
        watchdog: &watchdog,
    };
    let summary = train_loop(cfg, &mut tr, writer.as_mut(), first_val, &gr, run)?;
    if let (0, Some((c, _)), Some(ms)) = (rt.rank, &predicted_ms, summary.step_ms_median) {
        log::info!(
            "step time: predicted {:.1} ms, measured {ms:.1} ms (median after 2 steps; prediction {:+.0}%)",
            c.step_ms,
            100.0 * (c.step_ms / ms - 1.0)
        );
    }
    if cfg.log.save_final && summary.stopped_at.is_none() {
        let local = tr.model.be.download(&tr.params)?;
        let g = gather_weights(&gr.world, tr.grid, rt.rank, &tr.gcfg, &tr.glayout, local)?;
        if let Some(global) = g {
            let dir = out_dir.join("final");
            let mcfg = Gpt2Config::from_model_config(&cfg.model);
            let host = repad(&tr.glayout, &global, &ParamLayout::new(&mcfg));
            hf::save(&dir, &mcfg, &host)
                .with_context(|| format!("saving final weights to {}", dir.display()))?;
            log::info!("final weights (Hugging Face format): {}", dir.display());
        }
    }
    Ok(TrainSummary {
        metrics_path,
        out_dir,
        ..summary
    })
}

/// Gathers every rank's place; rank 0 logs one line per host and writes
/// `<log.out_dir>/run.json` (see [`placement`]). Collective over the world.
fn record_placement<B: Backend>(
    rt: &Runtime,
    cfg: &Config,
    tr: &Trainer<B>,
    threads: usize,
) -> Result<()> {
    let device = placement::planned_device(cfg, rt.local_rank);
    let places = placement::gather(rt, tr.grid, threads, &device)?;
    let res = if rt.rank == 0 {
        for line in placement::host_lines(&places) {
            log::info!("{line}");
        }
        placement::run_record(cfg, tr.grid, &places)
            .and_then(|r| placement::write_run_json(&cfg.log.out_dir, &r))
            .map(|_| ())
    } else {
        Ok(())
    };
    rt.agree(res)
}

/// Everything before the first step that can fail on bad input: the checkpoint to resume
/// from, the trainer (restored from it), the metrics file (continued when resuming). Returns
/// the trainer, rank 0's metrics writer and the first step to run.
/// What `set_up` prepares for the run.
struct SetUp<B: Backend> {
    tr: Trainer<B>,
    /// Metrics (rank 0).
    writer: Option<MetricsWriter>,
    /// Steps already done (from the resumed checkpoint).
    start: usize,
    /// The checkpoint directory's lock (rank 0), held until the run ends.
    lock: Option<DirLock>,
}

fn set_up<B: Backend>(
    cfg: &Config,
    opts: &TrainOptions,
    rt: &Runtime,
    be: B,
    metrics_path: &std::path::Path,
) -> Result<SetUp<B>> {
    // Rank 0 holds the checkpoint directory for the whole run (dropped when `run_on` returns).
    let lock = match (&cfg.checkpoint.dir, rt.rank) {
        (Some(dir), 0) => Some(DirLock::acquire(dir, opts.force_unlock)?),
        _ => None,
    };
    let resume = ckpt::resume_source(cfg, opts.resume.as_deref())?;
    let mut tr = Trainer::new(cfg, rt.size, rt.rank, be, resume.is_none())?;
    let start = match &resume {
        Some(dir) => {
            let t0 = Instant::now();
            let mut src = ckpt::open_source(dir)?;
            let step = tr.restore(&mut src)?;
            log::info!(
                "restored {:.1} MB of checkpoint data in {:.3} s",
                src.bytes_read as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            );
            if rt.rank == 0 {
                let m = &src.meta;
                log::info!(
                    "resuming from {} at step {step} (written on dp={} tp={} pp={})",
                    dir.display(),
                    m.dp,
                    m.tp,
                    m.pp
                );
            }
            step
        }
        None => 0,
    };
    let w = match (rt.rank, start) {
        (0, 0) => Some(MetricsWriter::create(metrics_path)?),
        (0, s) => Some(MetricsWriter::resume(metrics_path, s)?),
        _ => None,
    };
    Ok(SetUp {
        tr,
        writer: w,
        start,
        lock,
    })
}

/// The run's position and its checkpoint/stop machinery.
struct Run<'a> {
    start: usize,
    ckpt: Option<&'a mut Checkpointer>,
    stop: &'a AtomicBool,
    rank: usize,
    flight: &'a FlightRecorder,
    watchdog: &'a Watchdog,
}

/// The automatic watchdog timeout until three steps are done (start-up, first steps, kernel
/// compilation), and its floor afterwards.
const WATCHDOG_START_S: f64 = 900.0;
const WATCHDOG_FLOOR_S: f64 = 120.0;
/// After three steps the automatic timeout is this many times the slowest of them.
const WATCHDOG_STEPS: f64 = 20.0;

impl Run<'_> {
    /// Collective, after `done` steps: agree on a stop signal, complete a finished save, start
    /// a due one. Returns true when the run must stop now (its state saved).
    fn after_step<B: Backend>(
        &mut self,
        tr: &Trainer<B>,
        gr: &Groups,
        done: usize,
        last: bool,
    ) -> Result<bool> {
        let local = self.stop.load(Ordering::Relaxed);
        let Some(ck) = self.ckpt.as_deref_mut() else {
            let mut v = [f64::from(u8::from(local))];
            gr.metrics.all_reduce_sum_f64_uncounted(&mut v);
            if v[0] > 0.0 && self.rank == 0 {
                log::warn!("stop signal after step {done}: no checkpoint.dir, nothing saved");
            }
            return Ok(v[0] > 0.0);
        };
        let stop = ck.poll(&gr.metrics, local)?;
        if stop || ck.due(done, last) {
            if stop && self.rank == 0 {
                log::warn!("stop signal: saving step {done} and exiting for requeue");
            }
            if ck.busy() {
                // Never two saves at once: wait for the previous writer first.
                let t0 = Instant::now();
                ck.finish(&gr.metrics)?;
                if self.rank == 0 {
                    log::info!(
                        "waited {:.2} s for the previous checkpoint to finish writing",
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
            let since = Instant::now();
            let snap = tr.snapshot(done, self.rank, ck.take_spare())?;
            ck.start(snap, &gr.metrics, since)?;
        }
        if stop || last {
            ck.finish(&gr.metrics)?;
        }
        Ok(stop)
    }
}

/// The groups' (bytes, seconds) since the last call, in the metrics' key order.
fn take_stats(gr: &Groups) -> [(&'static str, u64, f64); 5] {
    let t = |k, c: &crate::comm::mpi::MpiComm| {
        let (b, s) = c.stats().take();
        (k, b, s)
    };
    [
        t("tp", &gr.tp),
        t("dp", &gr.dp),
        t("pp", &gr.pp),
        t("emb", &gr.emb),
        t("world", &gr.world),
    ]
}

/// Per-step communication figures of all ranks: bytes summed per group, milliseconds
/// averaged over ranks (per group, idle = bubble, and compute = the rest of the step).
fn step_comm(
    gr: &Groups,
    dt: f64,
    idle: f64,
) -> (
    BTreeMap<&'static str, u64>,
    BTreeMap<&'static str, f64>,
    f64,
    f64,
) {
    let st = take_stats(gr);
    let comm_s: f64 = st.iter().map(|x| x.2).sum();
    let mut v: Vec<f64> = st.iter().map(|x| x.1 as f64).collect();
    v.extend(st.iter().map(|x| x.2));
    v.extend([idle, (dt - comm_s - idle).max(0.0)]);
    gr.metrics.all_reduce_sum_f64_uncounted(&mut v);
    let w = gr.metrics.size() as f64;
    let bytes = st.iter().zip(&v).map(|(x, &b)| (x.0, b as u64)).collect();
    let ms = st
        .iter()
        .zip(&v[5..])
        .map(|(x, &s)| (x.0, s / w * 1e3))
        .collect();
    (bytes, ms, v[10] / w * 1e3, v[11] / w * 1e3)
}

fn log_setup<B: Backend>(cfg: &Config, tr: &Trainer<B>) {
    let mcfg = Gpt2Config::from_model_config(&cfg.model);
    let g = tr.grid;
    if cfg.train.backend == crate::config::BackendKind::Cpu {
        let job = crate::plan::memory::Job::from_config(cfg, g);
        if let Ok((stage, mem)) = crate::plan::memory::peak(&job) {
            log::info!("{}", crate::plan::memory::describe(&mem, stage));
        }
    }
    log::info!(
        "model: {} parameters ({}), vocab padded to {}; grid dp={} tp={} pp={} ({:?} schedule); global batch {}×{} tokens, {} micro-batch(es) of {} per dp rank; backend {}",
        ParamLayout::new(&mcfg).num_real_params(&mcfg),
        describe(&mcfg),
        tr.gcfg.padded_vocab,
        g.dp,
        g.tp,
        g.pp,
        cfg.parallel.schedule,
        cfg.train.global_batch_size,
        cfg.train.seq_len,
        tr.accum,
        cfg.train.micro_batch_size,
        tr.model.be.name()
    );
    if g.dp > 1 {
        let how = if cfg.parallel.overlap_grad_reduce {
            "started during backward"
        } else {
            "one reduction after backward"
        };
        let sizes: Vec<String> = tr.buckets.iter().map(|r| r.len.to_string()).collect();
        log::info!(
            "data-parallel gradient reduction (rank 0's stage): {} bucket(s) of [{}] floats, {how}",
            tr.buckets.len(),
            sizes.join(", ")
        );
    }
}

fn train_loop<B: Backend>(
    cfg: &Config,
    tr: &mut Trainer<B>,
    mut writer: Option<&mut MetricsWriter>,
    first_val: Option<f32>,
    gr: &Groups,
    mut run: Run,
) -> Result<TrainSummary> {
    let steps = cfg.train.steps;
    let mcfg = Gpt2Config::from_model_config(&cfg.model);
    let flops_per_token = mcfg.flops_per_token(
        ParamLayout::new(&mcfg).num_real_params(&mcfg),
        cfg.train.seq_len,
    );
    if run.start >= steps && run.rank == 0 {
        log::info!(
            "the checkpoint is at step {} >= train.steps = {steps}: nothing to train",
            run.start
        );
    }
    let bar = progress_bar(writer.is_some(), steps);
    if let Some(b) = &bar {
        b.set_position(run.start.min(steps) as u64);
    }
    let (mut last_val, mut final_loss, mut stopped_at) = (first_val, f32::NAN, None);
    let mut profile = ProfileSummary::default();
    let mut skipped = 0usize;
    let mut watch_times = Vec::new();
    let mut s = run.start;
    while s < steps {
        // The profile records the step's own ops only (not validation or saving). Taking it
        // waits for the device, so a profiled step's time includes its last kernels (an
        // unprofiled one leaves them to overlap the next step's start).
        tr.model.be.set_profiling(cfg.log.profile_ops);
        run.flight.set_step(s as u64 + 1, "step");
        test_hang(s, run.rank);
        let t0 = Instant::now();
        let out = tr.step(s, gr)?;
        let ops = tr.model.be.take_profile()?;
        tr.model.be.set_profiling(false);
        if let Some(why) = &out.skipped {
            skipped += 1;
            skip_step(cfg, writer.as_deref_mut(), s, why, skipped)?;
            continue; // the same step again, on the same batch
        }
        let dt = t0.elapsed().as_secs_f64();
        watch_times.push(dt);
        if cfg.runtime.watchdog_s.is_none() && watch_times.len() == 3 {
            let slowest = watch_times.iter().cloned().fold(0.0, f64::max);
            run.watchdog
                .set_timeout(WATCHDOG_FLOOR_S.max(WATCHDOG_STEPS * slowest));
            log::debug!("watchdog timeout {:.0} s", run.watchdog.timeout_s());
        }
        run.flight
            .set_step(s as u64 + 1, "validation and checkpoint");
        let (comm_bytes, comm_ms, bubble_ms, compute_ms) = step_comm(gr, dt, out.idle_s);
        let is_val = (cfg.train.val_every > 0 && (s + 1).is_multiple_of(cfg.train.val_every))
            || s + 1 == steps;
        let val_loss = if is_val { tr.validate(gr)? } else { None };
        take_stats(gr);
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
            comm_bytes,
            comm_ms,
            compute_ms,
            bubble_ms,
            ops,
        };
        profile.add(&m);
        if let Some(w) = writer.as_deref_mut() {
            w.write(&m)?;
            report_step(&bar, &m, steps, cfg.log.every);
        }
        let stop = run.after_step(tr, gr, s + 1, s + 1 == steps)?;
        if let (Some(w), Some(ck)) = (writer.as_deref_mut(), run.ckpt.as_deref_mut()) {
            for r in ck.reports.drain(..) {
                w.write_json(&serde_json::json!({ "checkpoint": r }))?;
            }
        }
        if stop {
            stopped_at = Some(s + 1);
            break;
        }
        s += 1;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if writer.is_some() {
        profile.log();
    }
    report_memory(cfg, tr, gr, writer.as_deref_mut())?;
    if skipped > 0 && writer.is_some() {
        log::warn!("{skipped} step(s) were discarded as non-finite and run again");
    }
    Ok(TrainSummary {
        steps: stopped_at.unwrap_or(steps),
        final_loss,
        first_val_loss: first_val,
        last_val_loss: last_val,
        metrics_path: PathBuf::new(),
        out_dir: PathBuf::new(),
        stopped_at,
        step_ms_median: median_after_warmup(&watch_times),
    })
}

/// Testing aid: `FERROTRON_TEST_HANG_AT=STEP:RANK` (1-based step, world rank) makes that rank
/// stop making progress at the start of that step, as a stuck rank would (the watchdog's test).
fn test_hang(step: usize, rank: usize) {
    let Ok(v) = std::env::var("FERROTRON_TEST_HANG_AT") else {
        return;
    };
    if v.split_once(':')
        .and_then(|(s, r)| Some((s.parse::<usize>().ok()?, r.parse::<usize>().ok()?)))
        == Some((step + 1, rank))
    {
        log::warn!(
            "FERROTRON_TEST_HANG_AT: rank {rank} hangs at step {}",
            step + 1
        );
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// A discarded step (`train.on_nonfinite = "skip"`): logged and recorded by rank 0 (the one
/// with the writer); more than `train.max_skipped_steps` in the run stop it on every rank.
fn skip_step(
    cfg: &Config,
    writer: Option<&mut MetricsWriter>,
    step: usize,
    why: &str,
    skipped: usize,
) -> Result<()> {
    let max = cfg.train.max_skipped_steps;
    if let Some(w) = writer {
        log::warn!("{why}: step discarded, running it again ({skipped} discarded, at most {max})");
        w.write_json(&serde_json::json!({
            "skipped_step": step + 1,
            "reason": why,
            "skipped_total": skipped,
        }))?;
    }
    if skipped > max {
        return Err(crate::runtime::Unanimous(format!(
            "{why}; {skipped} steps discarded, more than train.max_skipped_steps = {max} — \
             the step is not finite each time it runs (check the data or lower optim.lr)"
        ))
        .into());
    }
    Ok(())
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

/// Median of `times` (seconds) after the first two, in ms; of all of them if there are no more.
fn median_after_warmup(times: &[f64]) -> Option<f64> {
    let mut t: Vec<f64> = if times.len() > 2 {
        times[2..].to_vec()
    } else {
        times.to_vec()
    };
    t.sort_by(|a, b| a.total_cmp(b));
    t.get(t.len() / 2).map(|s| s * 1e3)
}

/// Gathers every rank's accounted peak memory (collective over the run-control group); rank 0
/// writes the largest as `{"mem_peak_bytes": {by category, "total"}, "rank": r}` to the metrics
/// and logs it. Nothing where the backend does not account (CUDA, for now).
fn report_memory<B: Backend>(
    cfg: &Config,
    tr: &Trainer<B>,
    gr: &Groups,
    writer: Option<&mut MetricsWriter>,
) -> Result<()> {
    let Some(mine) = tr.mem_peak() else {
        return Ok(());
    };
    let k = MemCategory::ALL.len();
    let (n, r) = (gr.metrics.size(), gr.metrics.rank());
    let mut all = vec![0f64; n * k];
    for (i, v) in mine.0.iter().enumerate() {
        all[r * k + i] = *v as f64;
    }
    gr.metrics.all_reduce_sum_f64(&mut all)?;
    let Some(w) = writer else {
        return Ok(());
    };
    let per_rank = |q: usize| MemBytes(std::array::from_fn(|i| all[q * k + i] as i64));
    let rank = (0..n).max_by_key(|&q| per_rank(q).total()).unwrap_or(0);
    let best = per_rank(rank);
    w.write_json(&serde_json::json!({ "mem_peak_bytes": best.to_json(), "rank": rank }))?;
    let mib = |b: i64| b as f64 / (1u64 << 20) as f64;
    let parts: Vec<String> = MemCategory::ALL
        .iter()
        .map(|&c| format!("{} {:.1}", c.name(), mib(best.get(c))))
        .collect();
    log::info!(
        "peak memory of the backend's buffers (largest on rank {rank}): {:.1} MiB = {} MiB",
        mib(best.total()),
        parts.join(" + ")
    );
    let job = crate::plan::memory::Job::from_config(cfg, tr.grid);
    if let Ok((_, planned)) = crate::plan::memory::peak(&job) {
        let d = 100.0 * (best.total() - planned.total()) as f64 / planned.total().max(1) as f64;
        log::info!(
            "memory per rank: planned {:.1} MiB, measured {:.1} MiB ({d:+.1}%)",
            mib(planned.total()),
            mib(best.total())
        );
    }
    Ok(())
}

/// The per-op profile summed over the steps after the first (which includes one-time work:
/// allocations, cuBLASLt's algorithm choice), logged at the end of a profiled run.
#[derive(Default)]
struct ProfileSummary {
    steps: usize,
    step_ms: f64,
    ops: crate::backend::profile::Profile,
}

impl ProfileSummary {
    fn add(&mut self, m: &StepMetrics) {
        let Some(ops) = &m.ops else { return };
        self.steps += 1;
        if self.steps == 1 {
            return;
        }
        self.step_ms += m.step_ms;
        for (name, s) in ops {
            let t = self.ops.entry(name).or_default();
            t.ms += s.ms;
            t.calls += s.calls;
        }
    }

    /// One line per op, most time first: ms per step, share of the step, calls per step.
    fn log(&self) {
        let n = self.steps.saturating_sub(1);
        if n == 0 {
            return;
        }
        let mut v: Vec<_> = self.ops.iter().collect();
        v.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms));
        let total: f64 = v.iter().map(|(_, s)| s.ms).sum();
        let per = |x: f64| x / n as f64;
        let mut out = format!(
            "op profile (rank 0, mean of {n} steps after the first): ops {:.2} ms of a {:.2} ms step",
            per(total),
            per(self.step_ms)
        );
        for (name, s) in v {
            out.push_str(&format!(
                "\n  {name:<24} {:>10.3} ms {:>5.1}%  {:>6.0} calls",
                per(s.ms),
                100.0 * s.ms / self.step_ms.max(1e-9),
                per(s.calls as f64)
            ));
        }
        log::info!("{out}");
    }
}
