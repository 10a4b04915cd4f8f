//! `ferrotron bench-machine --out FILE` (under mpirun/srun): measures the machine a job runs on
//! and writes a profile for `ferrotron plan` (`inputs/machines/*.toml` format):
//! - GEMM: every rank times the CPU GEMM provider it would train with (`train.cpu_gemm`'s
//!   auto) on the model's products (`--config`'s model at its micro-batch; GPT-2 small at
//!   B 4, T 256 without one) at the same time as the others (so shared cores and memory
//!   bandwidth count); `gemm_tflops` is the slowest rank's ΣFLOPs / Σtime over one training
//!   step's products (each layer's and the LM head's), `peak_tflops` the best 2048³ rate of any
//!   provider on any rank.
//! - MPI: rank 0 ping-pongs with the first rank on its host (intra) and the first rank on
//!   another host (inter; the local cluster's namespace hosts count as hosts): latency from
//!   8-byte round trips, bandwidth from 16 MiB ones (median of the repetitions).
//! - Memory: the host's `MemTotal` over the ranks on it, less 10%.
//! - Memory bandwidth, the non-GEMM kernels and the all-reduce bus bandwidth per link class:
//!   see [`super::bench_kernels`].
//!
//! With one host, `[inter]` repeats `[intra]` and says so; with one rank, both are marked as not
//! measured.

use super::bench_kernels;
use crate::backend::cpu::bench::{self, Shape};
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use mpi::collective::SystemOperation;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::Communicator;
use mpi::traits::CommunicatorCollectives;
use std::path::Path;
use std::time::Instant;

const HOST_BYTES: usize = 64;

/// Runs the measurement on every rank; rank 0 writes `out`.
pub fn run(
    rt: &Runtime,
    out: &Path,
    threads: usize,
    model: Option<(&Path, &[String])>,
) -> Result<()> {
    // Agreed before any collective: a rank that cannot measure must not leave the others waiting.
    let (shape, model_name) = rt.agree(match model {
        Some((p, sets)) => crate::config::Config::load(p, sets)
            .map(|c| (bench_kernels::ModelShape::of(&c), p.display().to_string())),
        None => Ok((
            bench_kernels::ModelShape::gpt2_small(),
            "GPT-2 small".into(),
        )),
    })?;
    let (gemm, peak) = rt.agree(gemm_rates(threads, &shape))?;
    let mut worst = 0f64;
    rt.world
        .all_reduce_into(&gemm, &mut worst, SystemOperation::min());
    let mut best_peak = 0f64;
    rt.world
        .all_reduce_into(&peak, &mut best_peak, SystemOperation::max());
    let k = bench_kernels::slowest(rt, rt.agree(bench_kernels::kernel_rates(threads, &shape))?);
    let hosts = gather_hosts(rt);
    let me = &hosts[rt.rank];
    let intra = (0..rt.size).find(|&r| r != 0 && hosts[r] == hosts[0]);
    let inter = (0..rt.size).find(|&r| hosts[r] != hosts[0]);
    let intra_link = intra.map(|p| ping_pong(rt, p));
    rt.world.barrier();
    let inter_link = inter.map(|p| ping_pong(rt, p));
    rt.world.barrier();
    let intra_bus = match intra {
        Some(p) => rt.agree(bench_kernels::all_reduce_pair(rt, p))?,
        None => None,
    };
    let inter_bus = match inter {
        Some(p) => rt.agree(bench_kernels::all_reduce_pair(rt, p))?,
        None => None,
    };
    if rt.rank != 0 {
        return Ok(());
    }
    let local = hosts.iter().filter(|h| *h == me).count().max(1);
    let mem_gib = mem_total_gib()? / local as f64 * 0.9;
    let link = |l: Option<Option<(f64, f64)>>,
                bus: Option<bench_kernels::PairReduce>,
                what: &str| {
        match l.flatten() {
        Some((lat, bw)) => format!(
            "bandwidth_gbs = {bw:.3}    # measured: 16 MiB ping-pong, {what}\nlatency_us = {lat:.2}    # measured: 8-byte ping-pong{}",
            bus.map(|b| format!(
                "\nallreduce_gbs = {:.3}    # measured: 64 MiB data-parallel reduction of two ranks (host copies + MPI_Iallreduce)\n\
                 overlap = {:.2}    # measured: fraction of it hidden behind compute that polls MPI",
                b.bus_gbs, b.overlap
            )).unwrap_or_default()
        ),
        None => format!(
            "bandwidth_gbs = 1          # NOT MEASURED: no {what} partner in this run\nlatency_us = 10             # NOT MEASURED"
        ),
    }
    };
    let inter_text = match (inter, intra_link) {
        (None, Some(Some(_))) => link(
            Some(intra_link.flatten()),
            intra_bus,
            "within the host (only one host: repeated from [intra])",
        ),
        _ => link(inter_link, inter_bus, "across hosts"),
    };
    let text = format!(
        "# Measured by `ferrotron bench-machine` on {host}, {ranks} rank(s) × {threads} thread(s), {hosts} host(s).\n\
         # GEMM and kernel rates at {model_name}: micro-batch {b} × {t} tokens, C {c}, {nh} heads, {layers} layers, vocabulary {vp}.\n\
         [machine]\n\
         name = \"{host} ({cpu}, {local} rank(s) per node)\"\n\
         devices_per_node = {local}\n\
         memory_gib = {mem_gib:.2}    # MemTotal / ranks on the host, less 10%\n\
         peak_tflops = {peak:.5}    # best 2048³ f32 GEMM of any provider, any rank\n\
         gemm_tflops = {gemm:.5}    # slowest rank's ΣFLOPs/Σtime over a step's products, all ranks at once\n\
         memory_gbs = {mem_bw:.3}    # slowest rank's y += x over 32 Mi floats (12 bytes each), all ranks at once\n\
         [kernels]    # the training kernels' rates, slowest rank, all ranks at once (plan::time's byte and FLOP counts)\n\
         attention_tflops = {att:.5}    # causal attention forward + backward\n\
         gelu_gbs = {gelu:.3}    # GELU forward twice + backward\n\
         xent_gbs = {xent:.3}    # softmax cross-entropy with gradient\n\
         [intra]\n{intra_text}\n[inter]\n{inter_text}\n",
        host = me,
        ranks = rt.size,
        hosts = {
            let mut h = hosts.clone();
            h.sort();
            h.dedup();
            h.len()
        },
        cpu = cpu_model(),
        peak = best_peak / 1e3,
        gemm = worst / 1e3,
        intra_text = link(intra_link, intra_bus, "within the host"),
        mem_bw = k.memory_gbs,
        b = shape.b,
        t = shape.t,
        c = shape.c,
        nh = shape.nh,
        layers = shape.layers,
        vp = shape.vp,
        att = k.attention_tflops,
        gelu = k.gelu_gbs,
        xent = k.xent_gbs,
    );
    std::fs::write(out, &text).with_context(|| format!("cannot write {}", out.display()))?;
    print!("{text}");
    println!("wrote {}", out.display());
    Ok(())
}

/// (the training provider's ΣFLOPs / Σtime in GFLOP/s over one step's products at `m`, weighted
/// by how often each runs; the best 2048³ GFLOP/s of any provider).
fn gemm_rates(threads: usize, m: &bench_kernels::ModelShape) -> Result<(f64, f64)> {
    let products = m.gemms();
    let mut shapes: Vec<Shape> = vec!["2048x2048x2048".parse()?];
    shapes.extend(products.iter().map(|(s, _)| *s));
    let rows = bench::run(&shapes, threads, 3, &[])?;
    let train = crate::backend::cpu::matmul::Gemm::resolve(None, threads)?;
    let name = train.provider_name();
    let (mut flops, mut secs) = (0.0f64, 0.0f64);
    for (i, (s, count)) in products.iter().enumerate() {
        // Row order: per shape, one row per provider; the training provider's of product i.
        let r = rows
            .iter()
            .filter(|r| r.provider == name)
            .nth(i + 1)
            .with_context(|| format!("no {name} figure for {s:?}"))?;
        let f = 2.0 * (s.m * s.n * s.k) as f64 * *count as f64;
        flops += f;
        secs += f / (r.gflops * 1e9);
    }
    let peak = rows
        .iter()
        .filter(|r| r.shape.m * r.shape.n * r.shape.k == 2048usize.pow(3))
        .map(|r| r.gflops)
        .fold(0.0, f64::max);
    Ok((flops / secs / 1e9, peak))
}

/// Every rank's host name, by rank.
fn gather_hosts(rt: &Runtime) -> Vec<String> {
    let mut name = [0u8; HOST_BYTES];
    let host = crate::runtime::hostname();
    let n = host.len().min(HOST_BYTES);
    name[..n].copy_from_slice(&host.as_bytes()[..n]);
    let mut all = vec![0u8; HOST_BYTES * rt.size];
    rt.world.all_gather_into(&name[..], &mut all[..]);
    all.chunks(HOST_BYTES)
        .map(|b| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        })
        .collect()
}

/// Rank 0 ↔ `peer`: (latency µs, bandwidth GB/s) on rank 0, None elsewhere.
fn ping_pong(rt: &Runtime, peer: usize) -> Option<(f64, f64)> {
    if rt.rank != 0 && rt.rank != peer {
        return None;
    }
    let other = if rt.rank == 0 { peer } else { 0 } as i32;
    let p = rt.world.process_at_rank(other);
    let round = |buf: &mut Vec<u8>| {
        let t0 = Instant::now();
        if rt.rank == 0 {
            p.send(&buf[..]);
            p.receive_into(&mut buf[..]);
        } else {
            p.receive_into(&mut buf[..]);
            p.send(&buf[..]);
        }
        t0.elapsed().as_secs_f64()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut small = vec![0u8; 8];
    let lat = median((0..200).map(|_| round(&mut small)).collect());
    let mut big = vec![0u8; 16 << 20];
    let t = median((0..10).map(|_| round(&mut big)).collect());
    (rt.rank == 0).then(|| (lat / 2.0 * 1e6, (16u64 << 20) as f64 / (t / 2.0) / 1e9))
}

fn mem_total_gib() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(kib / (1u64 << 20) as f64)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
