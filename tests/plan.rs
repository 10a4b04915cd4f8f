//! The planner's memory arithmetic against what runs account (`mem_peak_bytes`), per category,
//! for grids, ZeRO, micro-batch sizes, schedules and head chunks, under mpirun on the CPU backend.

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
    }
}
