//! `ferrotron bench-gemm`: GFLOP/s of each available CPU GEMM provider on given shapes, timed
//! side by side in alternating rounds (median over rounds after a warm-up product), so the
//! machine's GEMM peak and the providers' relative speed come from one run.

use super::blas::Blas;
use super::matmul::{Gemm, Mat};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::time::Instant;

/// One product shape: `dst[m, n] = op(a)[m, k] · op(b)[k, n]`; `ta`/`tb` say whether the
/// operand is stored transposed (as in the backward passes: `dx = dy·Wᵀ`, `dW = xᵀ·dy`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
}

impl std::str::FromStr for Shape {
    type Err = anyhow::Error;
    /// `MxNxK`, optionally followed by `:ta`, `:tb` or `:ta,tb` (e.g. `768x3072x1024:ta`).
    fn from_str(s: &str) -> Result<Self> {
        let (dims, flags) = s.split_once(':').unwrap_or((s, ""));
        let d: Vec<usize> = dims
            .split('x')
            .map(|v| v.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("shape {s:?}: expected MxNxK[:ta,tb]"))?;
        let flags: Vec<&str> = flags.split(',').filter(|f| !f.is_empty()).collect();
        if d.len() != 3 || d.contains(&0) || flags.iter().any(|f| !matches!(*f, "ta" | "tb")) {
            bail!("shape {s:?}: expected MxNxK[:ta,tb] with positive sizes");
        }
        Ok(Shape {
            m: d[0],
            n: d[1],
            k: d[2],
            ta: flags.contains(&"ta"),
            tb: flags.contains(&"tb"),
        })
    }
}

/// The default shapes: the 2048³ peak probe, then GPT-2 small's products for 1024 tokens
/// (forward, input gradient, weight gradient) of the QKV, MLP and LM-head layers.
pub const DEFAULT_SHAPES: &[&str] = &[
    "2048x2048x2048",
    "1024x2304x768",
    "1024x768x2304:tb",
    "768x2304x1024:ta",
    "1024x3072x768",
    "1024x768x3072",
    "3072x768x1024:ta",
    "1024x50304x768:tb",
    "1024x768x50304",
    "50304x768x1024:ta",
];

/// One provider's figure on one shape.
#[derive(Debug, Serialize)]
pub struct Row {
    pub provider: String,
    pub shape: Shape,
    pub median_ms: f64,
    pub gflops: f64,
}

/// Every provider this machine has: the built-in one, the `extra` libraries (each must load),
/// `$FERROTRON_BLAS` if set, and each library of the search list that loads.
fn providers(threads: usize, extra: &[std::path::PathBuf]) -> Result<Vec<(String, Gemm)>> {
    let mut out = vec![("builtin".to_string(), Gemm::builtin(threads))];
    for p in extra {
        let b = Blas::load(p).context("--blas")?;
        out.push((b.name.clone(), Gemm::with_blas(b, threads)));
    }
    let mut paths: Vec<String> = std::env::var("FERROTRON_BLAS")
        .ok()
        .filter(|p| !p.trim().is_empty() && p != "builtin" && p != "none")
        .into_iter()
        .collect();
    paths.extend(super::blas::search_list());
    for p in paths {
        match Blas::load(std::path::Path::new(&p)) {
            // Two sonames of one library describe themselves the same way: measured once.
            Ok(b) if out.iter().any(|(n, _)| *n == b.name) => {}
            Ok(b) => out.push((b.name.clone(), Gemm::with_blas(b, threads))),
            Err(e) => log::debug!("bench-gemm: {p}: {e:#}"),
        }
    }
    Ok(out)
}

/// Times every provider on every shape: `rounds` rounds, each running each provider once per
/// shape in turn (order alternating between rounds), after one warm-up product each.
pub fn run(
    shapes: &[Shape],
    threads: usize,
    rounds: usize,
    extra: &[std::path::PathBuf],
) -> Result<Vec<Row>> {
    let provs = providers(threads, extra)?;
    let mut rows = Vec::new();
    for s in shapes {
        let a = operand(s.m, s.k, 1);
        let b = operand(s.k, s.n, 2);
        let mut dst = vec![0f32; s.m * s.n];
        let (am, bm) = (view(&a, s.m, s.k, s.ta), view(&b, s.k, s.n, s.tb));
        let mut times = vec![Vec::new(); provs.len()];
        for round in 0..=rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..provs.len()).collect()
            } else {
                (0..provs.len()).rev().collect()
            };
            for i in order {
                let t0 = Instant::now();
                provs[i].1.matmul(&mut dst, s.n, am, bm, false);
                if round > 0 {
                    times[i].push(t0.elapsed().as_secs_f64());
                }
            }
        }
        for ((name, _), mut t) in provs.iter().zip(times) {
            t.sort_by(|x, y| x.total_cmp(y));
            let med = t[t.len() / 2];
            let flops = 2.0 * (s.m * s.n * s.k) as f64;
            rows.push(Row {
                provider: name.clone(),
                shape: *s,
                median_ms: med * 1e3,
                gflops: flops / med / 1e9,
            });
        }
    }
    Ok(rows)
}

/// `[r, c]` stored row-major, or (`t`) stored as its `[c, r]` transpose.
fn view(d: &[f32], r: usize, c: usize, t: bool) -> Mat<'_> {
    if t {
        Mat::new(d, c, r).t()
    } else {
        Mat::new(d, r, c)
    }
}

/// A deterministic operand with values in [-1, 1).
fn operand(r: usize, c: usize, salt: usize) -> Vec<f32> {
    (0..r * c)
        .map(|i| {
            ((i.wrapping_mul(2654435761).wrapping_add(salt * 97)) % 2001) as f32 / 1000.5 - 1.0
        })
        .collect()
}
