"""Predicted (`ferrotron plan`) vs measured step time and memory, for several grids on this
machine (CPU backend, one thread per rank, as `inputs/machines/cpu-local.toml` assumes).
Writes benchmarks/results/plan_accuracy.{json,md}.

    python3 benchmarks/plan_accuracy/run.py [--steps 6] [--machine inputs/machines/cpu-local.toml]

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--machine", default=os.path.join(ROOT, "inputs/machines/cpu-local.toml"))
    a = ap.parse_args()
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
    med_t = statistics.median(abs(r["step_error"]) for r in runs)
    med_m = statistics.median(abs(r["mem_error"]) for r in runs)
    res = {"cpu": cpu, "commit": commit, "machine_profile": os.path.relpath(a.machine, ROOT), "model": SETS,
           "runs": runs, "median_abs_step_error": med_t, "median_abs_mem_error": med_m}
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
    lines += ["", f"Median |error|: step time {100 * med_t:.0f}%, memory {100 * med_m:.1f}%."]
    open(os.path.join(out, "plan_accuracy.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
