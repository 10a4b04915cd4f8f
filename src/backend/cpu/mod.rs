//! The CPU backend: f32, rayon-parallel, bitwise deterministic for a fixed thread count.

pub mod math;
pub mod matmul;

/// Threads for this rank: `--threads`, else `OMP_NUM_THREADS`, else the cores available.
pub fn default_threads(cli: Option<usize>) -> usize {
    if let Some(t) = cli.filter(|&t| t > 0) {
        return t;
    }
    if let Some(t) = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    {
        if t > 0 {
            return t;
        }
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
