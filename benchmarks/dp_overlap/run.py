"""Data-parallel overlap: step time with the gradient reduction in buckets started during
backward, vs the same buckets started after backward, vs one blocking all-reduce after backward,
and vs dp = 1 (no reduction: the floor an ideal overlap reaches). Writes
benchmarks/results/dp_overlap.{json,png,md}.

    python3 benchmarks/dp_overlap/run.py [--steps 12] [--repeats 2] [--variants default,cma,gpt2vocab]

Needs: a release build (built with `cargo build --release` if missing) and OpenMPI's mpirun.
Python stdlib only (the PNG is drawn by pipeline_bubble's small rasteriser). About 4 minutes on
2 cores.

Measurement: `ferrotron train` with dp = 2 ranks (tp = pp = 1), 1 thread per rank, micro-batch
1 of 64 tokens per rank and step (global batch 2), so the reduction of the gradients is a large
part of a step. The metrics JSONL gives per step `step_ms`, `comm_ms.dp` (time inside the dp
group's MPI calls: starting the reductions, the MPI_Test calls between layers, and the final
waits, averaged over ranks) and `compute_ms`. Step 1 of each run is warm-up; figures are
medians over the other steps of `--repeats` runs, pooled.

Modes (all dp = 2 except `dp1`):
  dp1          dp = 1, same per-rank batch: no gradient reduction at all.
  single       parallel.overlap_grad_reduce = false, bucket_mb = 1e6: one all-reduce of the
               whole gradient after backward (the classic blocking scheme).
  after-1      overlap off, 1 MiB buckets: the same buckets as overlap-1, all started after
               backward (separates the effect of message size from that of overlap).
  overlap-S    overlap on, S MiB buckets: each bucket's MPI_Iallreduce starts when the backward
               has passed its layers; MPI_Test after each layer. A layer is 3.0 MiB, so S = 1
               gives a bucket per layer, 6 two layers, 12 four, and 25 (the default) all eight
               in one bucket (started after the last layer: overlap only with the embedding
               backward).
  ZeRO-1 rows (optim.zero = 1) use MPI_Ireduce_scatter per bucket instead, then all-gather.

Model: 8 layers, n_embd 256, 4 heads, T = 64, a 256-token vocabulary on synthetic tokens
(6.4 M parameters, 25.6 MB of f32 gradients; the embeddings, which are reduced last, are
1.3 % of them). Variant `gpt2vocab` uses GPT-2's 50257 tokens: the tied embedding is then 12.9 M
of 19.2 M parameters, and since its gradient is final only after the embedding backward, that
bucket cannot overlap with anything on a single stage.

Variants (mpirun --oversubscribe --bind-to none -np 2):
  default    + --mca btl_vader_single_copy_mechanism none, as scripts/demo.sh and the tests.
  cma        OpenMPI's default single-copy mechanism (CMA).
  gpt2vocab  cma with the GPT-2 vocabulary (modes dp1, single, overlap-1 only).
"""
import argparse, importlib.util, json, os, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

_spec = importlib.util.spec_from_file_location("pipeline_bubble", os.path.join(HERE, "..", "pipeline_bubble", "run.py"))
pb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pb)

MODEL = {"n_layer": 8, "n_head": 4, "n_embd": 256, "seq_len": 64}
BASE = ["--oversubscribe", "--bind-to", "none"]
NO_CMA = ["--mca", "btl_vader_single_copy_mechanism", "none"]
# mode: (dp, overlap, bucket_mb, zero)
MODES = {
    "dp1": (1, True, 25.0, 0),
    "single": (2, False, 1e6, 0),
    "after-1": (2, False, 1.0, 0),
    "overlap-1": (2, True, 1.0, 0),
    "overlap-6": (2, True, 6.0, 0),
    "overlap-12": (2, True, 12.0, 0),
    "overlap-25": (2, True, 25.0, 0),
    "zero1-single": (2, False, 1e6, 1),
    "zero1-after-1": (2, False, 1.0, 1),
    "zero1-overlap-1": (2, True, 1.0, 1),
}
VARIANTS = {
    # name: (mpirun options, vocab_size, modes or None for all)
    "default": (BASE + NO_CMA, 256, None),
    "cma": (BASE, 256, None),
    "gpt2vocab": (BASE, 50257, ["dp1", "single", "overlap-1"]),
}


def train(bin_, out, mode, steps, mpi_opts, vocab, shard):
    dp, overlap, mb, zero = MODES[mode]
    sets = [f"train.steps={steps}", "train.micro_batch_size=1", f"train.global_batch_size={dp}",
            "train.val_every=0", "train.val_batches=0", f"parallel.overlap_grad_reduce={str(overlap).lower()}",
            f"parallel.bucket_mb={mb}", f"optim.zero={zero}",
            f"model.n_layer={MODEL['n_layer']}", f"model.n_head={MODEL['n_head']}", f"model.n_embd={MODEL['n_embd']}",
            f"model.n_positions={MODEL['seq_len']}", f"train.seq_len={MODEL['seq_len']}", f"model.vocab_size={vocab}",
            f'data.train="{shard}"', f'data.val="{shard}"', f'log.out_dir="{out}"', "log.plot=false",
            "log.save_final=false"]
    cmd = ["mpirun", *mpi_opts, "-np", str(dp), bin_, "train", "--config",
           os.path.join(ROOT, "inputs", "tiny.toml"), "--threads", "1"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stderr[-3000:]}")
    buckets = next((l.split("reduction (rank 0's stage): ", 1)[1] for l in r.stderr.splitlines()
                    if "data-parallel gradient reduction" in l), "")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"step"' in l]
    return rows, wall, buckets


def run_one(bin_, work, variant, mode, steps, repeats):
    opts, vocab, _ = VARIANTS[variant]
    shard = os.path.join(work, f"tokens_v{vocab}.bin")
    if not os.path.exists(shard):
        pb.write_shard(shard, 200_000, vocab)
    timed, walls, buckets = [], [], ""
    for rep in range(repeats):
        out = os.path.join(work, f"run_{variant}_{mode}_{rep}")
        rows, wall, buckets = train(bin_, out, mode, steps, opts, vocab, shard)
        timed += rows[1:]  # step 1 of each run is warm-up
        walls.append(round(wall, 2))
    med = lambda f: statistics.median(f(x) for x in timed)
    dp, overlap, mb, zero = MODES[mode]
    return {"variant": variant, "mode": mode, "dp": dp, "overlap": overlap, "bucket_mb": mb, "zero": zero,
            "vocab_size": vocab, "step_ms": med(lambda x: x["step_ms"]),
            "dp_ms": med(lambda x: x["comm_ms"].get("dp", 0.0)), "compute_ms": med(lambda x: x["compute_ms"]),
            "other_comm_ms": med(lambda x: sum(v for k, v in x["comm_ms"].items() if k != "dp")),
            "dp_bytes": timed[0]["comm_bytes"].get("dp", 0), "step_ms_per_step": [round(x["step_ms"], 2) for x in timed],
            "buckets": buckets, "timed_steps": len(timed), "runs": repeats, "wall_s": walls}


COLOURS = {"compute": (120, 150, 200), "dp": (255, 127, 14), "rest": (200, 200, 200)}


def plot_png(results, path):
    """One panel per variant: a horizontal bar per mode, stacked compute | dp comm | rest."""
    by_v = {}
    for r in results["rows"]:
        by_v.setdefault(r["variant"], []).append(r)
    bar_h, gap, left, top, pw = 26, 10, 200, 70, 700
    heights = [len(rows) * (bar_h + gap) + 90 for rows in by_v.values()]
    cv = pb.Canvas(left + pw + 160, top + sum(heights) + 120)
    cv.text(cv.w // 2, 15, "dp=2 step time: bucketed overlapped vs after backward vs one all-reduce", anchor="c")
    y0 = top
    for (v, rows), h in zip(by_v.items(), heights):
        xmax = max(r["step_ms"] for r in rows) * 1.1
        X = lambda ms: left + ms / xmax * pw
        cv.text(left, y0, f"variant {v} (vocab {rows[0]['vocab_size']})")
        y = y0 + 30
        for r in rows:
            c = r["compute_ms"]
            d = r["dp_ms"]
            cv.rect(X(0), y, X(c), y + bar_h, COLOURS["compute"])
            cv.rect(X(c), y, X(c + d), y + bar_h, COLOURS["dp"])
            cv.rect(X(c + d), y, X(r["step_ms"]), y + bar_h, COLOURS["rest"])
            cv.text(left - 8, y + 6, r["mode"], anchor="r")
            cv.text(X(r["step_ms"]) + 6, y + 6, f"{r['step_ms']:.0f} ms")
            y += bar_h + gap
        for k in range(0, int(xmax) + 1, max(10, int(xmax / 8) // 10 * 10)):  # axis ticks
            cv.line(X(k), y, X(k), y + 6, (0, 0, 0))
            cv.text(X(k), y + 10, str(k), anchor="c")
        cv.line(X(0), y0 + 24, X(0), y, (0, 0, 0), 2)
        y0 += h
    x = left
    for label, key in [("compute", "compute"), ("comm_ms.dp", "dp"), ("other comm + idle", "rest")]:
        cv.rect(x, y0, x + 30, y0 + 16, COLOURS[key])
        cv.text(x + 38, y0 + 1, label)
        x += 38 + 12 * len(label) + 30
    mi = results["machine"]
    cv.text(left, y0 + 40, f"{mi['cpu']}, nproc={mi['nproc']}, medians over steps (ms)", scale=2)
    cv.png(path)


def markdown(results):
    base = {r["variant"]: r for r in results["rows"] if r["mode"] == "single"}
    zbase = {r["variant"]: r for r in results["rows"] if r["mode"] == "zero1-single"}
    lines = ["| variant | mode | buckets: count [floats] | step ms | comm_ms.dp | compute ms | speed-up vs single |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        ref = (zbase if r["zero"] else base).get(r["variant"])
        sp = f"{ref['step_ms'] / r['step_ms']:.2f}×" if ref and r["dp"] > 1 else "-"
        b = r["buckets"].split(" floats")[0].replace("bucket(s) of ", "") if r["buckets"] else "-"
        if len(b) > 48:
            b = b[:45] + "…]"
        lines.append(f"| {r['variant']} | {r['mode']} | {b} | {r['step_ms']:.1f} | {r['dp_ms']:.1f} | "
                     f"{r['compute_ms']:.1f} | {sp} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrotron", default=os.path.join(ROOT, "target", "release", "ferrotron"))
    ap.add_argument("--steps", type=int, default=12, help="steps per run; step 1 is dropped as warm-up")
    ap.add_argument("--repeats", type=int, default=2, help="runs per point; their timed steps are pooled")
    ap.add_argument("--variants", default="default,cma,gpt2vocab", help=",".join(VARIANTS))
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    if not os.path.exists(a.ferrotron):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    if shutil.which("mpirun") is None:
        sys.exit("mpirun not found (OpenMPI)")
    variants = a.variants.split(",")
    os.makedirs(a.out, exist_ok=True)
    results = {"machine": pb.machine_info(a.ferrotron), "model": dict(MODEL, micro_batch_size=1, threads_per_rank=1),
               "modes": {m: dict(zip(("dp", "overlap", "bucket_mb", "zero"), v)) for m, v in MODES.items()},
               "variants": {v: {"mpirun": ["mpirun", *o], "vocab_size": vs, "modes": ms}
                            for v, (o, vs, ms) in VARIANTS.items()},
               "steps": a.steps, "metric": "median over steps 2..N (runs pooled)", "load_before": pb.loadavg(),
               "rows": []}
    if (results["load_before"] or [0])[0] > 0.5:
        print(f"warning: load average {results['load_before']}: timings are only meaningful on an idle machine",
              file=sys.stderr)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="dp_overlap_") as work:
        bin_ = os.path.join(work, "ferrotron")  # a private copy: a rebuild mid-run cannot swap it
        shutil.copy2(a.ferrotron, bin_)
        for v in variants:
            for mode in VARIANTS[v][2] or MODES:
                row = run_one(bin_, work, v, mode, a.steps, a.repeats)
                results["rows"].append(row)
                print(f"{v:9s} {mode:16s} step {row['step_ms']:7.1f} ms  dp {row['dp_ms']:6.1f} ms  "
                      f"compute {row['compute_ms']:6.1f} ms  {row['buckets']}", flush=True)
    results["load_after"] = pb.loadavg()
    results["total_wall_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(a.out, "dp_overlap.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_png(results, os.path.join(a.out, "dp_overlap.png"))
    table = markdown(results)
    with open(os.path.join(a.out, "dp_overlap.md"), "w") as f:
        mi = results["machine"]
        f.write(f"CPU: {mi['cpu']}, nproc {mi['nproc']}; {mi['mpirun']}; ferrotron {mi['git_commit'][:7]}; "
                f"load average before/after {results['load_before']} / {results['load_after']}\n\n" + table)
    print(table)
    print(f"wrote {a.out}/dp_overlap.{{json,png,md}} in {results['total_wall_s']} s")


if __name__ == "__main__":
    main()
