//! The `ferrotron` binary: parse the command line, start MPI, run the command. Every failure
//! prints one message and ends every rank with a non-zero exit code.

use anyhow::Result;
use clap::Parser;
use ferrotron::cli::{Cli, Command, EvalArgs, GenerateArgs, PrepareArgs, TrainArgs};
use ferrotron::runtime::Runtime;

fn main() {
    let cli = Cli::parse();
    let rt = match Runtime::init() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(ferrotron::runtime::EXIT_FAILURE);
        }
    };
    let threads = ferrotron::backend::cpu::default_threads(cli.threads, rt.local_size);
    // The process-wide rayon pool runs every parallel op and GEMM of this rank.
    let res = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {threads} worker threads: {e}"))
        .and_then(|_| run(&rt, cli.command, threads));
    match res {
        Ok(0) => {}
        Ok(code) => {
            drop(rt); // MPI_Finalize on every rank, then the documented exit code
            std::process::exit(code);
        }
        Err(e) => rt.fail(&e),
    }
}

/// Runs the command; returns the process exit code (0, or `EXIT_REQUEUE` after a stop signal).
fn run(rt: &Runtime, cmd: Command, threads: usize) -> Result<i32> {
    test_failure_hook(rt)?;
    match cmd {
        Command::Train(a) => return train(rt, a, threads),
        Command::PrepareData(a) => prepare(rt, a),
        Command::Eval(a) => rt.agree(eval(rt, a, threads)),
        Command::Generate(a) => rt.agree(generate(rt, a, threads)),
        Command::Plot(a) => rt.agree(ferrotron::plot::plot_loss_curve(
            &a.metrics,
            &a.out,
            "ferrotron",
        )),
        Command::Ckpt(a) => rt.agree(if rt.rank == 0 {
            ferrotron::checkpoint::inspect::run(a.command)
        } else {
            Ok(())
        }),
        Command::Plan(a) => rt.agree(if rt.rank == 0 {
            ferrotron::plan::report::run(&a)
        } else {
            Ok(())
        }),
        Command::BenchMachine { out, config, sets } => {
            rt.agree(ferrotron::plan::bench_machine::run(
                rt,
                &out,
                threads,
                config.as_deref().map(|c| (c, sets.as_slice())),
            ))
        }
        Command::BenchGemm {
            shapes,
            rounds,
            blas,
            json,
        } => rt.agree(bench_gemm(&shapes, rounds, &blas, json, threads)),
        Command::Diagnose { out_dir } => rt.agree(if rt.rank == 0 {
            ferrotron::diagnose::run(&out_dir)
        } else {
            Ok(())
        }),
        Command::Study(a) => rt.agree(if rt.rank == 0 {
            ferrotron::study::run(a.command)
        } else {
            Ok(())
        }),
    }?;
    Ok(0)
}

fn train(rt: &Runtime, a: TrainArgs, threads: usize) -> Result<i32> {
    let mut overrides = a.set.clone();
    if let Some(dir) = &a.init_hf {
        overrides.push(format!("train.init_hf={:?}", dir.display().to_string()));
    }
    let cfg = rt.agree(ferrotron::config::Config::load(&a.config, &overrides))?;
    if a.dry_run {
        ferrotron::train::dry_run(rt, &cfg, threads)?;
        return Ok(0);
    }
    let opts = ferrotron::train::TrainOptions {
        metrics: a.metrics,
        threads,
        resume: a.resume,
        force_unlock: a.force_unlock,
    };
    let s = ferrotron::train::run(rt, &cfg, &opts)?;
    if let Some(n) = s.stopped_at {
        if rt.rank == 0 {
            let saved = match &cfg.checkpoint.dir {
                Some(d) => format!("checkpoint saved under {}", d.display()),
                None => "nothing saved (no checkpoint.dir)".to_string(),
            };
            println!(
                "stopped by a signal after step {n}: {saved}; exit code {} asks the job script to requeue",
                ferrotron::runtime::EXIT_REQUEUE
            );
        }
        return Ok(ferrotron::runtime::EXIT_REQUEUE);
    }
    if rt.rank == 0 {
        let png = s.out_dir.join("loss.png");
        // The run succeeded: a plot that cannot be drawn is a warning, not a failure.
        let plotted = cfg.log.plot
            && match ferrotron::plot::plot_loss_curve(
                &s.metrics_path,
                &png,
                &format!("ferrotron — {}", a.config.display()),
            ) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("could not draw the loss plot {}: {e:#}", png.display());
                    false
                }
            };
        let fmt = |v: Option<f32>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        println!(
            "trained {} steps: train loss {:.4}, val loss {} -> {}",
            s.steps,
            s.final_loss,
            fmt(s.first_val_loss),
            fmt(s.last_val_loss)
        );
        println!("metrics: {}", s.metrics_path.display());
        if let Some(b) = ferrotron::metrics::peak_rss_bytes() {
            println!(
                "peak resident memory (rank 0): {:.1} MiB",
                b as f64 / (1u64 << 20) as f64
            );
        }
        if plotted {
            println!("loss plot: {}", png.display());
        }
        if cfg.log.save_final {
            println!(
                "weights (Hugging Face): {}",
                s.out_dir.join("final").display()
            );
        }
    }
    Ok(0)
}

fn prepare(rt: &Runtime, a: PrepareArgs) -> Result<()> {
    let opts = ferrotron::data::PrepareOptions {
        val_every: a.val_every,
        shard_tokens: a.shard_tokens,
        field: a.field,
        skip_bad: a.skip_bad,
        progress: !a.no_progress,
        unit_bytes: None,
    };
    let s = ferrotron::data::prepare_data(rt, &a.input, &a.out, &opts)?;
    if rt.rank != 0 {
        return Ok(());
    }
    println!(
        "{} documents: {} train tokens, {} val tokens -> {}",
        s.documents,
        s.train_tokens,
        s.val_tokens,
        a.out.display()
    );
    Ok(())
}

fn eval(rt: &Runtime, a: EvalArgs, threads: usize) -> Result<()> {
    use ferrotron::config::BackendKind;
    use ferrotron::train::{EvalJob, Weights};
    let backend = match a.backend.as_str() {
        "cpu" => BackendKind::Cpu,
        "cuda" => BackendKind::Cuda,
        other => anyhow::bail!("--backend {other:?}: expected cpu or cuda"),
    };
    let weights = match (a.hf, a.ckpt) {
        (Some(h), _) => Weights::Hf(h),
        (None, Some(c)) => Weights::Ckpt(c),
        (None, None) => anyhow::bail!("give --hf DIR or --ckpt DIR"),
    };
    let job = EvalJob {
        weights,
        data: a.data,
        batch: a.batch,
        seq: a.seq,
        batches: a.batches,
        tp: a.tp,
        pp: a.pp,
        backend,
        threads,
    };
    let (loss, tokens) = ferrotron::train::evaluate(rt, &job)?;
    if rt.rank == 0 {
        let r = ferrotron::eval::EvalResult { loss, tokens };
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("loss {:.6} over {} tokens", r.loss, r.tokens);
        }
    }
    Ok(())
}

fn backend_kind(name: &str) -> Result<ferrotron::config::BackendKind> {
    use ferrotron::config::BackendKind;
    match name {
        "cpu" => Ok(BackendKind::Cpu),
        "cuda" => Ok(BackendKind::Cuda),
        other => anyhow::bail!("--backend {other:?}: expected cpu or cuda"),
    }
}

/// The prompts of `generate`: (text when given as text, token ids).
use anyhow::Context as _;

fn gen_prompts(
    a: &GenerateArgs,
    tok: &ferrotron::data::Gpt2Tokenizer,
) -> Result<Vec<(Option<String>, Vec<u32>)>> {
    if let Some(t) = &a.prompt {
        return Ok(vec![(Some(t.clone()), tok.encode(t))]);
    }
    if let Some(ids) = &a.prompt_ids {
        return Ok(vec![(None, ids.clone())]);
    }
    let path = a
        .prompts
        .as_ref()
        .context("give --prompt, --prompt-ids or --prompts")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --prompts {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let where_ = || format!("--prompts {} line {}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(where_)?;
        if let Some(t) = v.get("prompt").and_then(|x| x.as_str()) {
            out.push((Some(t.to_string()), tok.encode(t)));
        } else if let Some(ids) = v.get("prompt_ids").and_then(|x| x.as_array()) {
            let ids = ids
                .iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .with_context(|| format!("{}: prompt_ids must be token ids", where_()))?;
            out.push((None, ids));
        } else {
            anyhow::bail!(
                "{}: expected {{\"prompt\": ...}} or {{\"prompt_ids\": [...]}}",
                where_()
            );
        }
    }
    Ok(out)
}

fn generate(rt: &Runtime, a: GenerateArgs, threads: usize) -> Result<()> {
    use ferrotron::generate::{GenJob, Sampling};
    use ferrotron::train::Weights;
    let tok = ferrotron::data::Gpt2Tokenizer::new()?;
    let prompts = gen_prompts(&a, &tok)?;
    let weights = match (&a.hf, &a.ckpt) {
        (Some(h), _) => Weights::Hf(h.clone()),
        (None, Some(c)) => Weights::Ckpt(c.clone()),
        (None, None) => anyhow::bail!("give --hf DIR or --ckpt DIR"),
    };
    let any_text = prompts.iter().any(|(t, _)| t.is_some());
    let eot = ferrotron::data::EOT;
    let job = GenJob {
        weights,
        prompts: prompts.iter().map(|(_, ids)| ids.clone()).collect(),
        max_new: a.max_new_tokens,
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop: any_text.then_some(eot),
        tp: a.tp,
        pp: a.pp,
        backend: backend_kind(&a.backend)?,
        threads,
        profile_ops: a.profile_ops,
    };
    let out = ferrotron::generate::run(rt, &job)?;
    if rt.rank != 0 {
        return Ok(());
    }
    for (i, ((text, ids), new)) in prompts.iter().zip(&out).enumerate() {
        let decoded = tok.decode(new).ok();
        if a.json {
            let v = serde_json::json!({
                "index": i,
                "prompt": text,
                "prompt_ids": ids,
                "ids": new,
                "text": decoded,
            });
            println!("{v}");
        } else {
            match (text, decoded) {
                (Some(t), Some(d)) => println!("{t}{d}"),
                _ => println!(
                    "{}",
                    new.iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            }
        }
    }
    Ok(())
}

fn bench_gemm(
    shapes: &[String],
    rounds: usize,
    blas: &[std::path::PathBuf],
    json: bool,
    threads: usize,
) -> Result<()> {
    use ferrotron::backend::cpu::bench;
    let names: Vec<&str> = if shapes.is_empty() {
        bench::DEFAULT_SHAPES.to_vec()
    } else {
        shapes.iter().map(String::as_str).collect()
    };
    let shapes = names
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<bench::Shape>>>()?;
    let rows = bench::run(&shapes, threads, rounds.max(1), blas)?;
    for r in &rows {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            let s = &r.shape;
            println!(
                "{:>6}x{:<6}x{:<6}{:<3}{:<3} {:>9.2} ms {:>8.1} GFLOP/s  {}",
                s.m,
                s.n,
                s.k,
                if s.ta { "ta" } else { "" },
                if s.tb { "tb" } else { "" },
                r.median_ms,
                r.gflops,
                r.provider
            );
        }
    }
    Ok(())
}

/// Test hook: `FERROTRON_TEST_FAIL=panic:R` or `error:R` makes rank R panic or fail right after
/// start-up while its peers go on into a collective — the integration tests use it to prove
/// that one failing rank ends the whole job instead of hanging it.
fn test_failure_hook(rt: &Runtime) -> Result<()> {
    let Ok(spec) = std::env::var("FERROTRON_TEST_FAIL") else {
        return Ok(());
    };
    let (mode, rank) = spec.split_once(':').unwrap_or((spec.as_str(), "0"));
    if rank.parse::<usize>().ok() != Some(rt.rank) {
        return Ok(());
    }
    match mode {
        "panic" => panic!(
            "deliberate test panic on rank {} (FERROTRON_TEST_FAIL)",
            rt.rank
        ),
        _ => anyhow::bail!(
            "deliberate test failure on rank {} (FERROTRON_TEST_FAIL)",
            rt.rank
        ),
    }
}
