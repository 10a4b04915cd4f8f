"""Predicted (`ferrotron plan`) vs measured step time and memory, for several grids on this
machine (CPU backend, one thread per rank, as `inputs/machines/cpu-local.toml` assumes) and
for the runs of a strong-scaling study on the local Slurm cluster (scripts/scaling-study.sh on
1, 2 and 4 hosts, one rank per host, against `inputs/machines/cpu-local-cluster.toml`).
Writes benchmarks/results/plan_accuracy.{json,md}.

    sudo python3 benchmarks/plan_accuracy/run.py [--steps 6] [--no-cluster]

The machine profiles are measured first, in the same run, by `ferrotron bench-machine --config`
at each part's model and micro-batch (as a user would before planning): on 2 ranks of this
machine, and across 2 hosts of the local cluster with srun; they are written to
benchmarks/results/plan_accuracy/{local,cluster}.toml.

The study's 4-host run puts 4 ranks on this machine's 2 cores (the hosts are network
namespaces of one machine): it is reported but left out of the step-time median, since the
plan assumes a core per rank.

Needs a release build and data/fortunes (scripts/demo.sh prepares it). Measured step time: the
median step after 2 warm-up steps; measured memory: the run's `mem_peak_bytes` (the largest
rank's accounted buffers). Predicted: `ferrotron plan --grid dp,tp,pp --json` for the same
config. Ranks × threads never exceed the machine's cores, so the figures are not oversubscribed.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.path.join(ROOT, "target/release/ferrotron")
SETS = ["model.n_layer=4", "model.n_head=8", "model.n_embd=512", "model.n_positions=128",
        "train.seq_len=128", "train.micro_batch_size=4", "train.global_batch_size=8",
        "train.val_every=0", "train.val_batches=0", "log.plot=false", "log.save_final=false"]
# (dp, tp, pp, extra sets)
GRIDS = [(1, 1, 1, []), (2, 1, 1, []), (1, 2, 1, []), (1, 1, 2, []), (1, 1, 2, ['parallel.schedule="gpipe"']),
         (2, 1, 1, ["optim.zero=1"])]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")


def sets_args(extra):
    out = []
    for s in SETS + extra:
        out += ["--set", s]
    return out


def measure(dp, tp, pp, extra, steps):
    world = dp * tp * pp
    with tempfile.TemporaryDirectory() as d:
        m = os.path.join(d, "m.jsonl")
        cmd = ["mpirun", "-np", str(world), "--bind-to", "core", BIN, "--threads", "1", "train", "--config",
               os.path.join(ROOT, "inputs/tiny.toml"), "--metrics", m, "--set", f"train.steps={steps}",
               "--set", f'log.out_dir="{d}"', "--set", f"parallel.dp={dp}", "--set", f"parallel.tp={tp}",
               "--set", f"parallel.pp={pp}"] + sets_args(extra)
        p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"run failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
        rows = [json.loads(l) for l in open(m)]
    step_ms = statistics.median(r["step_ms"] for r in rows if "loss" in r and r["step"] > 2)
    mem = next(r["mem_peak_bytes"]["total"] for r in rows if "mem_peak_bytes" in r)
    return step_ms, mem


def predict(dp, tp, pp, extra, machine):
    world = dp * tp * pp
    cmd = [BIN, "plan", "--config", os.path.join(ROOT, "inputs/tiny.toml"), "--machine", machine, "--ranks",
           str(world), "--grid", f"{dp},{tp},{pp}", "--json"] + sets_args(extra)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    g = json.loads(p.stdout)["grids"][0]
    return g["step_ms"], g["mem_bytes"]["total"]


STUDY_SETS = ["train.micro_batch_size=2", "train.val_every=0"]


def bench_machine(out, cluster):
    """Profile this machine (2 ranks) or 2 local-cluster hosts at the part's model."""
    sets = []
    for x in (STUDY_SETS if cluster else SETS):
        sets += ["--set", x]
    args = [BIN, "--threads", "1", "bench-machine", "--out", out, "--config", os.path.join(ROOT, "inputs/tiny.toml")] + sets
    if cluster:
        wrap = "srun --mpi=pmix " + " ".join(f"'{a}'" for a in args)
        cmd = ["sbatch", "--wait", "--nodes", "2", "--ntasks-per-node", "1", "-o", out + ".out", "--wrap", wrap]
    else:
        cmd = ["mpirun", "-np", "2", "--bind-to", "core"] + args
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(out):
        sys.exit(f"bench-machine failed: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    if cluster:
        os.remove(out + ".out")


def study_runs(steps, machine):
    """A strong-scaling study on 1, 2, 4 local-cluster hosts; predicted vs measured per run."""
    subprocess.run(["bash", "scripts/cluster-local.sh", "up", "4"], cwd=ROOT, env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    runs = []
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "study")
        cmd = ["bash", "scripts/scaling-study.sh", "--mode", "strong", "--out", out, "--config",
               os.path.join(ROOT, "inputs/tiny.toml"), "--nodes", "1,2,4", "--steps", str(steps),
               "--set", STUDY_SETS[0], "--set", STUDY_SETS[1],
               "--set", f'data.train="{ROOT}/data/fortunes/train_*.bin"',
               "--set", f'data.val="{ROOT}/data/fortunes/val_*.bin"', "--one-at-a-time", "--wait"]
        p = subprocess.run(cmd, cwd=ROOT, env=dict(ENV, FERROTRON=BIN), capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"study failed: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        for n in (1, 2, 4):
            run = os.path.join(out, f"n{n}")
            info = json.load(open(os.path.join(run, "run.json")))
            rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
            ms = statistics.median(r["step_ms"] for r in rows if "loss" in r and r["step"] > 2)
            mem = next(r["mem_peak_bytes"]["total"] for r in rows if "mem_peak_bytes" in r)
            cfg = os.path.join(d, f"n{n}.toml")
            open(cfg, "w").write(info["config"])
            g = info["grid"]
            pl = subprocess.run([BIN, "plan", "--config", cfg, "--machine", machine, "--ranks", str(info["world"]),
                                 "--grid", f"{g['dp']},{g['tp']},{g['pp']}", "--json"],
                                cwd=ROOT, capture_output=True, text=True, check=True)
            pg = json.loads(pl.stdout)["grids"][0]
            over = info["world"] > os.cpu_count()
            runs.append({"hosts": n, "dp": g["dp"], "tp": g["tp"], "pp": g["pp"], "step_ms": ms,
                         "planned_step_ms": pg["step_ms"], "step_error": pg["step_ms"] / ms - 1, "mem_bytes": mem,
                         "planned_mem_bytes": pg["mem_bytes"]["total"],
                         "mem_error": pg["mem_bytes"]["total"] / mem - 1, "oversubscribed": over})
            print(runs[-1], flush=True)
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--study-steps", type=int, default=20)
    ap.add_argument("--no-cluster", action="store_true")
    a = ap.parse_args()
    prof = os.path.join(ROOT, "benchmarks/results/plan_accuracy")
    os.makedirs(prof, exist_ok=True)
    a.machine, a.cluster_machine = os.path.join(prof, "local.toml"), os.path.join(prof, "cluster.toml")
    bench_machine(a.machine, cluster=False)
    if not a.no_cluster:
        subprocess.run(["bash", "scripts/cluster-local.sh", "up", "4"], cwd=ROOT, env=ENV, check=True,
                       stdout=subprocess.DEVNULL)
        bench_machine(a.cluster_machine, cluster=True)
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    runs = []
    for dp, tp, pp, extra in GRIDS:
        ms, mem = measure(dp, tp, pp, extra, a.steps)
        pms, pmem = predict(dp, tp, pp, extra, a.machine)
        r = {"dp": dp, "tp": tp, "pp": pp, "extra": extra, "step_ms": ms, "planned_step_ms": pms,
             "step_error": pms / ms - 1, "mem_bytes": mem, "planned_mem_bytes": pmem, "mem_error": pmem / mem - 1}
        runs.append(r)
        print(r, flush=True)
    study = [] if a.no_cluster else study_runs(a.study_steps, a.cluster_machine)
    timed = runs + [r for r in study if not r["oversubscribed"]]
    med_t = statistics.median(abs(r["step_error"]) for r in timed)
    med_m = statistics.median(abs(r["mem_error"]) for r in runs + study)
    res = {"cpu": cpu, "commit": commit, "machine_profile": os.path.relpath(a.machine, ROOT), "model": SETS,
           "runs": runs, "cluster_machine_profile": os.path.relpath(a.cluster_machine, ROOT), "study_runs": study,
           "median_abs_step_error": med_t, "median_abs_mem_error": med_m}
    out = os.path.join(ROOT, "benchmarks/results")
    os.makedirs(out, exist_ok=True)
    json.dump(res, open(os.path.join(out, "plan_accuracy.json"), "w"), indent=2)
    lines = [f"CPU: {cpu}, 1 thread per rank, commit {commit}, profile {res['machine_profile']}.",
             "Model: L4 C512 H8 T128, micro-batch 4, global batch 8 (tiny.toml's data).", "",
             "| grid | measured step ms | planned | error | measured MiB | planned | error |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        g = f"dp{r['dp']} tp{r['tp']} pp{r['pp']}" + (" " + " ".join(r["extra"]) if r["extra"] else "")
        lines.append(f"| {g} | {r['step_ms']:.0f} | {r['planned_step_ms']:.0f} | {100 * r['step_error']:+.0f}% | "
                     f"{r['mem_bytes'] / 2**20:.1f} | {r['planned_mem_bytes'] / 2**20:.1f} | {100 * r['mem_error']:+.1f}% |")
    if study:
        lines += ["", f"Strong-scaling study on the local Slurm cluster (`scripts/scaling-study.sh`, inputs/tiny.toml,",
                  f"micro-batch 2, global batch 8, {a.study_steps} steps, 1 rank per host), profile {res['cluster_machine_profile']}:", "",
                  "| hosts | grid | measured step ms | planned | error | measured MiB | planned | error |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in study:
            note = " (oversubscribed: 4 ranks on 2 cores, not in the median)" if r["oversubscribed"] else ""
            lines.append(f"| {r['hosts']} | dp{r['dp']} tp{r['tp']} pp{r['pp']} | {r['step_ms']:.0f} | "
                         f"{r['planned_step_ms']:.0f} | {100 * r['step_error']:+.0f}%{note} | {r['mem_bytes'] / 2**20:.1f} | "
                         f"{r['planned_mem_bytes'] / 2**20:.1f} | {100 * r['mem_error']:+.1f}% |")
    lines += ["", f"Median |error| over {len(timed)} timed runs: step time {100 * med_t:.0f}%; "
              f"over {len(runs) + len(study)} runs: memory {100 * med_m:.1f}%."]
    open(os.path.join(out, "plan_accuracy.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
