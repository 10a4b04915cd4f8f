//! The CPU backend: f32, rayon-parallel, bitwise deterministic for a fixed thread count.

pub mod math;
pub mod matmul;

/// Threads for this rank: `--threads`, else `OMP_NUM_THREADS`, else the cores this process may
/// run on. A process bound to a subset of the machine (srun `--cpus-per-task`, mpirun's default
/// binding) uses exactly its cores; an unbound one shares the machine with the other
/// `local_ranks` ranks of the job on this node.
pub fn default_threads(cli: Option<usize>, local_ranks: usize) -> usize {
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
    // `available_parallelism` honours the affinity mask (sched_getaffinity).
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if allowed >= online_cpus() {
        (allowed / local_ranks.max(1)).max(1)
    } else {
        allowed
    }
}

/// CPUs online on this machine (`processor` lines of /proc/cpuinfo; 0 if unknown).
fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}
