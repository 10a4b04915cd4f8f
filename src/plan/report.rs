//! The `ferrotron plan` command: reads the inputs, evaluates, prints tables or JSON.

use super::machine::Machine;
use super::{enumerate, evaluate, Candidate};
use crate::cli::PlanArgs;
use crate::config::Config;
use anyhow::{bail, Context, Result};

/// Runs `ferrotron plan`.
pub fn run(a: &PlanArgs) -> Result<()> {
    let m = Machine::load(&a.machine)?;
    let mut sets = a.set.clone();
    let world = match (a.ranks, a.nodes) {
        (Some(r), _) => r,
        (None, Some(n)) => n * a.gpus_per_node.unwrap_or(m.machine.devices_per_node),
        (None, None) => bail!("give --ranks R or --nodes N"),
    };
    if world == 0 {
        bail!("the world size must be ≥ 1 (--ranks, or --nodes × --gpus-per-node)");
    }
    if let Some(g) = &a.grid {
        let v: Vec<usize> = g
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|v: &Vec<usize>| v.len() == 3)
            .with_context(|| format!("--grid {g:?}: expected DP,TP,PP"))?;
        sets.extend([
            format!("parallel.dp={}", v[0]),
            format!("parallel.tp={}", v[1]),
            format!("parallel.pp={}", v[2]),
        ]);
    }
    let cfg = Config::load(&a.config, &sets)?;
    let (grids, rejected) = if a.grid.is_some() {
        (vec![evaluate(&cfg, world, &m)?], Vec::new())
    } else {
        enumerate(&cfg, world, &m)?
    };
    if a.json {
        let v = serde_json::json!({
            "machine": m.machine.name, "ranks": world, "grids": grids, "rejected": rejected,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} on {world} rank(s) of {} ({:.0} GiB per rank):",
        a.config.display(),
        m.machine.name,
        m.machine.memory_gib
    );
    print_table(&grids[..grids.len().min(a.top.max(1))]);
    let nothing_fits = grids.iter().all(|c| !c.fits);
    if !rejected.is_empty() {
        println!("\nrejected (the trainer gives the same reason):");
        let mut seen: Vec<(usize, usize, usize, &str, Vec<usize>)> = Vec::new();
        for r in &rejected {
            match seen
                .iter_mut()
                .find(|s| (s.0, s.1, s.2, s.3) == (r.dp, r.tp, r.pp, r.reason.as_str()))
            {
                Some(s) => s.4.push(r.micro_batch_size),
                None => seen.push((r.dp, r.tp, r.pp, &r.reason, vec![r.micro_batch_size])),
            }
        }
        for (dp, tp, pp, reason, mbs) in seen {
            let mbs: Vec<String> = mbs.iter().map(|m| m.to_string()).collect();
            println!(
                "  dp={dp} tp={tp} pp={pp} (micro-batch {}): {reason}",
                mbs.join(", ")
            );
        }
    }
    if nothing_fits {
        match grids.iter().min_by_key(|c| c.mem_bytes["total"]) {
            Some(best) => {
                let need = best.mem_bytes["total"] as f64 / (1u64 << 30) as f64;
                bail!(
                    "no grid fits on {world} rank(s): the smallest needs {need:.3} GiB per rank (dp={} tp={} pp={} micro-batch {}), {:.3} GiB more than the {} GiB of {}",
                    best.dp, best.tp, best.pp, best.micro_batch_size,
                    need - m.machine.memory_gib, m.machine.memory_gib, m.machine.name
                )
            }
            None => bail!("no grid is possible on {world} rank(s): see the reasons above"),
        }
    }
    Ok(())
}

fn print_table(rows: &[Candidate]) {
    let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
    println!(
        "{:>4} {:>3} {:>3} {:>4} {:>6} {:>4} {:>9} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} | {:>4} | {:>9} {:>11} {:>6}",
        "dp", "tp", "pp", "mb", "sched", "zero", "recompute", "params", "grads", "optim", "acts", "logits", "work", "total GiB", "fits",
        "step ms", "tokens/s", "MFU"
    );
    for c in rows {
        let mb = |k: &str| gib(c.mem_bytes[k]);
        println!(
            "{:>4} {:>3} {:>3} {:>4} {:>6} {:>4} {:>9} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} | {:>4} | {:>9.1} {:>11.0} {:>5.1}%",
            c.dp, c.tp, c.pp, c.micro_batch_size, c.schedule, c.zero, c.recompute,
            mb("params"), mb("grads"), mb("optimizer"), mb("activations"), mb("logits"), mb("workspace"), mb("total"),
            if c.fits { "yes" } else { "no" },
            c.step_ms, c.tokens_per_s, 100.0 * c.mfu
        );
    }
}
