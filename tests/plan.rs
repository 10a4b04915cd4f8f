//! The planner's memory arithmetic against what runs account (`mem_peak_bytes`), per category,
//! for grids, ZeRO, micro-batch sizes, schedules, head chunks and recomputation, under mpirun on the CPU backend.

mod common;
use common::*;
use ferrotron::backend::ledger::MemCategory;
use ferrotron::config::Config;
use ferrotron::parallel::Grid;
use ferrotron::plan::memory;
use std::path::Path;

/// (ranks, extra config lines) — each a different (grid, zero, micro-batch, schedule) combination.
const COMBOS: &[(usize, &str)] = &[
    (1, ""),
    (1, "[train]\nmicro_batch_size = 4\nglobal_batch_size = 8\n"),
    (2, "[parallel]\ntp = 2\n"),
    (2, "[parallel]\npp = 2\n"),
    (2, "[parallel]\npp = 2\nschedule = \"gpipe\"\n"),
    (2, "[optim]\nzero = 1\n"),
    (2, ""),
    (4, "[parallel]\ntp = 2\npp = 2\n"),
    (4, "[parallel]\npp = 4\n[model]\nn_layer = 4\n"),
    (4, "[optim]\nzero = 1\n[train]\nglobal_batch_size = 8\n"),
    (2, "[parallel]\ntp = 2\n[train]\nhead_chunk_rows = 24\n"),
    (4, "[parallel]\npp = 2\nschedule = \"gpipe\"\n[train]\nmicro_batch_size = 1\nglobal_batch_size = 8\n"),
    (2, "[parallel]\ntp = 2\n[train]\nrecompute = \"selective\"\n"),
    (2, "[parallel]\npp = 2\n[train]\nrecompute = \"full\"\n"),
    (4, "[parallel]\ntp = 2\n[optim]\nzero = 1\n[train]\nrecompute = \"full\"\n"),
];

/// Merges `extra` (TOML sections) into the tiny test config.
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(tiny_config(dir, "")).unwrap();
    let mut doc: toml::Table = base.parse().unwrap();
    let add: toml::Table = extra.parse().unwrap();
    for (sec, kv) in add {
        let t = doc
            .entry(sec)
            .or_insert(toml::Value::Table(Default::default()));
        for (k, v) in kv.as_table().unwrap() {
            t.as_table_mut().unwrap().insert(k.clone(), v.clone());
        }
    }
    let p = dir.join("config.toml");
    std::fs::write(&p, toml::to_string(&doc).unwrap()).unwrap();
    p
}

#[test]
fn planned_memory_equals_the_accounted_peak() {
    for (i, (ranks, extra)) in COMBOS.iter().enumerate() {
        let dir = scratch(&format!("plan-mem-{i}"));
        let cfg_path = config(&dir, extra);
        let metrics = dir.join("m.jsonl");
        mpirun(
            *ranks,
            &[
                "train",
                "--config",
                cfg_path.to_str().unwrap(),
                "--metrics",
                metrics.to_str().unwrap(),
                "--set",
                "train.steps=2",
            ],
            &[],
            &dir,
        )
        .assert_ok();
        let text = std::fs::read_to_string(&metrics).unwrap();
        let got: serde_json::Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("mem_peak_bytes").is_some())
            .expect("a mem_peak_bytes line")["mem_peak_bytes"]
            .clone();
        let cfg = Config::load(&cfg_path, &[]).unwrap();
        let p = &cfg.parallel;
        let grid = Grid::new(*ranks, p.dp, p.tp, p.pp).unwrap();
        let (_, want) = memory::peak(&memory::Job::from_config(&cfg, grid)).unwrap();
        for c in MemCategory::ALL {
            let (g, w) = (got[c.name()].as_i64().unwrap(), want.get(c));
            assert!(
                (g - w).abs() as f64 <= 0.02 * w.max(1) as f64,
                "combo {i} ({ranks} ranks, {extra:?}): {}: accounted {g}, planned {w}\n{got}",
                c.name()
            );
        }
        let (g, w) = (got["total"].as_i64().unwrap(), want.total());
        eprintln!("combo {i} ({ranks} ranks, {extra:?}): accounted {g}, planned {w}");
        assert!(
            (g - w).abs() as f64 <= 0.02 * w as f64,
            "combo {i}: total {g} vs {w}"
        );
        // Communication: the bytes the plan gives for this combination are the bytes counted.
        let job = memory::Job::from_config(&cfg, grid);
        let padded = job.model.with_tp_padding(grid.tp);
        let planned = ferrotron::parallel::plan::step_bytes(
            &padded,
            grid,
            job.micro_batch,
            job.seq,
            job.accum,
            job.zero && grid.dp > 1,
            job.recompute,
        )
        .unwrap();
        let steps: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("comm_bytes").is_some())
            .collect();
        assert_eq!(steps.len(), 2, "combo {i}");
        for v in steps {
            for (k, b) in &planned {
                assert_eq!(
                    v["comm_bytes"][*k].as_u64().unwrap_or(0),
                    *b,
                    "combo {i}: {k} bytes measured vs planned"
                );
            }
        }
    }
}

fn plan(args: &[&str], dir: &Path) -> Out {
    let mut a = vec!["plan"];
    a.extend_from_slice(args);
    ferrotron(&a, dir)
}

fn machine_profile() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("inputs/machines/cpu-local.toml")
}

/// Every grid `plan` calls feasible passes the trainer's set-up (`train --dry-run` on that many
/// ranks), and every grid it rejects is rejected by the trainer with the same message.
#[test]
fn plan_and_trainer_agree_on_every_grid() {
    let dir = scratch("plan-agree");
    let cfg = config(&dir, "");
    let machine = machine_profile();
    let o = plan(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--machine",
            machine.to_str().unwrap(),
            "--ranks",
            "4",
            "--json",
        ],
        &dir,
    );
    o.assert_ok();
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    let dry = |k: [u64; 4]| {
        let sets = [
            format!("parallel.dp={}", k[0]),
            format!("parallel.tp={}", k[1]),
            format!("parallel.pp={}", k[2]),
            format!("train.micro_batch_size={}", k[3]),
        ];
        let mut a = vec!["train", "--config", cfg.to_str().unwrap(), "--dry-run"];
        for s in &sets {
            a.extend(["--set", s.as_str()]);
        }
        mpirun(4, &a, &[], &dir)
    };
    let key = |g: &serde_json::Value| {
        ["dp", "tp", "pp", "micro_batch_size"].map(|k| g[k].as_u64().unwrap())
    };
    let mut done = Vec::new();
    let grids = v["grids"].as_array().unwrap();
    assert!(grids.len() >= 4, "{v}");
    for g in grids {
        let k = key(g);
        if !done.contains(&k) {
            done.push(k);
            dry(k).assert_ok();
        }
        for f in ["params", "grads", "optimizer", "activations", "total"] {
            assert!(g["mem_bytes"][f].as_i64().unwrap() > 0, "{g}");
        }
        assert!(g["step_ms"].as_f64().unwrap() > 0.0 && g["mfu"].as_f64().unwrap() > 0.0);
    }
    let rejected = v["rejected"].as_array().unwrap();
    assert!(
        !rejected.is_empty(),
        "pp = 4 > n_layer = 2 must be rejected: {v}"
    );
    let mut reasons = Vec::new();
    for r in rejected {
        let reason = r["reason"].as_str().unwrap().to_string();
        if !reasons.contains(&reason) {
            dry(key(r)).assert_clean_failure(&reason);
            reasons.push(reason);
        }
    }
}

/// Bad input to `plan`: one clear message each, non-zero exit.
#[test]
fn plan_bad_input_is_one_clear_message() {
    let dir = scratch("plan-bad");
    let cfg = config(&dir, "");
    let cfg = cfg.to_str().unwrap();
    let good = std::fs::read_to_string(machine_profile()).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let run = |m: &str, extra: &[&str]| {
        let mut a = vec!["--config", cfg, "--machine", m];
        a.extend_from_slice(extra);
        plan(&a, &dir)
    };
    let missing = dir.join("nope.toml");
    run(missing.to_str().unwrap(), &["--ranks", "2"])
        .assert_clean_failure("cannot read the machine profile");
    let no_key = write("nokey.toml", &good.replace("gemm_tflops", "# gemm_tflops"));
    run(&no_key, &["--ranks", "2"]).assert_clean_failure("missing field `gemm_tflops`");
    let negative = write(
        "neg.toml",
        &good.replace("memory_gib = 10.59", "memory_gib = -1"),
    );
    run(&negative, &["--ranks", "2"])
        .assert_clean_failure("machine.memory_gib = -1 must be a positive number");
    let overlap = write(
        "overlap.toml",
        &good.replacen("overlap = 0.30", "overlap = 1.5", 1),
    );
    run(&overlap, &["--ranks", "2"])
        .assert_clean_failure("intra.overlap = 1.5 must be between 0 and 1");
    let good_p = write("good.toml", &good);
    run(&good_p, &["--ranks", "0"]).assert_clean_failure("the world size must be ≥ 1");
    run(&good_p, &["--ranks", "2", "--grid", "2,x,1"])
        .assert_clean_failure("--grid \"2,x,1\": expected DP,TP,PP");
    run(&good_p, &["--ranks", "3", "--grid", "1,3,1"])
        .assert_clean_failure("is not divisible by parallel.tp = 3");
    let small = write(
        "small.toml",
        &good.replace("memory_gib = 10.59", "memory_gib = 0.001"),
    );
    let o = run(&small, &["--ranks", "2"]);
    o.assert_clean_failure("no grid fits on 2 rank(s): the smallest needs");
    assert!(
        o.stdout.contains("| fits |"),
        "the table is still shown:\n{}",
        o.all()
    );
}

/// `bench-machine` on 2 ranks writes a profile `plan` accepts, with measured GEMM and link
/// figures (one host here: `[inter]` says it repeats `[intra]`).
#[test]
fn bench_machine_writes_a_usable_profile() {
    let dir = scratch("bench-machine");
    let out = dir.join("local.toml");
    mpirun(
        2,
        &["bench-machine", "--out", out.to_str().unwrap()],
        &[],
        &dir,
    )
    .assert_ok();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("measured: 16 MiB ping-pong, within the host"),
        "{text}"
    );
    assert!(
        text.contains("only one host: repeated from [intra]"),
        "{text}"
    );
    let m = ferrotron::plan::machine::Machine::load(&out).unwrap();
    assert_eq!(m.machine.devices_per_node, 2);
    assert!(m.machine.gemm_tflops > 0.0 && m.machine.peak_tflops >= m.machine.gemm_tflops * 0.5);
    assert!(m.machine.memory_gbs > 0.0, "{text}");
    let k = m.kernels;
    for (name, v) in [
        ("attention_tflops", k.attention_tflops),
        ("gelu_gbs", k.gelu_gbs),
        ("xent_gbs", k.xent_gbs),
        ("intra.allreduce_gbs", m.intra.allreduce_gbs),
        ("intra.overlap", m.intra.overlap),
    ] {
        assert!(v.is_some(), "{name} measured:\n{text}");
    }
    let cfg = config(&dir, "");
    plan(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--machine",
            out.to_str().unwrap(),
            "--ranks",
            "2",
        ],
        &dir,
    )
    .assert_ok();
}

/// `log.machine`: a run logs the plan's predicted step time at start and the measured one
/// beside it at the end; a profile that does not load stops every rank at set-up.
#[test]
fn a_run_logs_predicted_beside_measured() {
    let dir = scratch("plan-run");
    let cfg = config(&dir, "");
    let machine = machine_profile();
    let set = format!("log.machine={:?}", machine.to_str().unwrap());
    let o = mpirun(
        2,
        &["train", "--config", cfg.to_str().unwrap(), "--set", &set],
        &[],
        &dir,
    );
    o.assert_ok();
    let all = o.all();
    assert!(all.contains("plan on CPU node"), "{all}");
    assert!(all.contains("step time: predicted"), "{all}");
    assert!(all.contains("memory per rank: planned"), "{all}");
    let bad = "log.machine=\"no-such-profile.toml\"";
    mpirun(
        2,
        &["train", "--config", cfg.to_str().unwrap(), "--set", bad],
        &[],
        &dir,
    )
    .assert_clean_failure("cannot read the machine profile no-such-profile.toml");
}
