"""ferrotron vs PyTorch eager on this CPU: training-step speed side by side, and both against the
machine's GEMM peak measured in the same run. Writes benchmarks/results/cpu_vs_pytorch.{json,md}.

    PYTHONPATH=/path/to/torch-site python3 benchmarks/cpu_vs_pytorch/run.py [--threads 2] [--rounds 3]

Needs: a release build (target/release/ferrotron), data/fortunes (scripts/demo.sh prepares it),
torch + transformers importable by this python (e.g. `pip install --target DIR torch
transformers`, then PYTHONPATH=DIR).

Sides, per shape (GPT-2 f32, same thread count, one process per side and round):
  ferrotron (auto)     the CPU backend with `train.cpu_gemm = "auto"` (the system BLAS it finds)
  ferrotron (builtin)  the same with the built-in `gemm` crate
  pytorch              Hugging Face GPT2LMHeadModel eager + AdamW + grad-norm clipping, batches
                       made before the timed loop (pytorch_bench.py)
Statistic, the same for every side: the median step time after two warm-up steps within a
process; then the median over `--rounds` rounds, whose side order alternates (forward, reversed).
Model FLOP/s = (6·N + 6·L·T·C) · tokens/s, N the parameter count; the GEMM peak is the best
median GFLOP/s of a 2048³ f32 product over ferrotron's providers (`ferrotron bench-gemm`: the
built-in kernels and every system BLAS it loads) and PyTorch's torch.mm (MKL), measured in this
run. One profiled ferrotron (auto) run per shape, outside the timed rounds, gives the per-op
breakdown. Run it on an otherwise idle machine.
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
WARMUP = 2

SHAPES = {
    # name: (n_layer, n_head, n_embd, seq, batch, timed steps)
    "tiny": (4, 4, 128, 128, 8, 8),
    "gpt2-small-width (L2 C768)": (2, 12, 768, 256, 4, 4),
    "gpt2-124m": (12, 12, 768, 256, 4, 3),
}
VOCAB = 50257


def n_params(L, C, T):
    """GPT2LMHeadModel's parameter count (tied LM head) with n_positions = T."""
    return VOCAB * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


def model_flops_per_token(L, C, T):
    return 6 * n_params(L, C, T) + 6 * L * T * C


def ferrotron(bin_, shape, threads, gemm, profile=False):
    L, H, C, T, B, timed = SHAPES[shape]
    with tempfile.TemporaryDirectory() as d:
        m = os.path.join(d, "m.jsonl")
        sets = [f"model.n_layer={L}", f"model.n_head={H}", f"model.n_embd={C}", f"model.n_positions={T}",
                f"model.vocab_size={VOCAB}", f"train.seq_len={T}", f"train.micro_batch_size={B}",
                f"train.global_batch_size={B}", f"train.steps={WARMUP + timed}", "train.val_every=0",
                "train.val_batches=0", f'train.cpu_gemm="{gemm}"', "log.plot=false", "log.save_final=false",
                f'log.out_dir="{d}"', f"log.profile_ops={'true' if profile else 'false'}"]
        cmd = [bin_, "--threads", str(threads), "train", "--config", os.path.join(ROOT, "inputs/tiny.toml"),
               "--metrics", m]
        for s in sets:
            cmd += ["--set", s]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"ferrotron failed:\n{p.stderr[-3000:]}")
        rows = [json.loads(l) for l in open(m) if '"loss"' in l]
        backend = next((l.split("backend ", 1)[1] for l in p.stderr.splitlines() if "; backend " in l), "?")
    steps = [r["step_ms"] for r in rows[WARMUP:]]
    out = {"step_ms": statistics.median(steps), "step_ms_all": steps, "backend": backend}
    if profile:
        ops = {}
        for r in rows[WARMUP:]:
            for k, v in r.get("ops", {}).items():
                ops[k] = ops.get(k, 0.0) + v["ms"] / len(rows[WARMUP:])
        out["ops_ms"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))
    return out


def pytorch(shape, threads):
    L, H, C, T, B, timed = SHAPES[shape]
    p = subprocess.run([sys.executable, os.path.join(HERE, "pytorch_bench.py"), "--n-layer", str(L), "--n-head",
                        str(H), "--n-embd", str(C), "--seq", str(T), "--n-positions", str(T), "--batch", str(B),
                        "--steps", str(timed), "--warmup-steps", str(WARMUP), "--threads", str(threads),
                        "--attn", "sdpa"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"pytorch_bench.py failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"step_ms": r["step_ms"], "step_ms_all": r["step_ms_all"], "torch": r["torch"],
            "transformers": r["transformers"]}


def gemm_peak(bin_, threads, rounds, extra_blas):
    """2048³ f32 GEMM, median GFLOP/s per provider: ferrotron's (bench-gemm: built-in and every
    BLAS library of auto's search list, plus `extra_blas`) and torch.mm's."""
    extra = [x for lib in extra_blas for x in ("--blas", lib)]
    p = subprocess.run([bin_, "--threads", str(threads), "bench-gemm", "--json", "--rounds", str(rounds),
                        "--shape", "2048x2048x2048"] + extra, capture_output=True, text=True, check=True)
    out = {f"ferrotron {json.loads(l)['provider']}": json.loads(l)["gflops"] for l in p.stdout.splitlines()}
    code = f"""
import json, statistics, time, torch
torch.set_num_threads({threads})
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
torch.mm(a, b)
t = []
for _ in range({rounds}):
    t0 = time.perf_counter(); torch.mm(a, b); t.append(time.perf_counter() - t0)
print(json.dumps(2 * 2048**3 / statistics.median(t) / 1e9))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out["pytorch torch.mm (MKL)"] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def libraries():
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True)
    torch_cfg = subprocess.run([sys.executable, "-c", "import torch; print(torch.__config__.show())"],
                               capture_output=True, text=True).stdout
    mkl = next((l.strip(" -") for l in torch_cfg.splitlines() if "Math Kernel Library" in l), "?")
    return {"git_commit": git.stdout.strip(), "rustc": rustc.stdout.strip(), "pytorch_blas": mkl}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ferrotron", default=os.path.join(ROOT, "target/release/ferrotron"))
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--extra-blas", action="append", default=[],
                    help="another CBLAS library for the GEMM-peak probe only (e.g. MKL from PyPI: "
                         "VENV/lib/libmkl_rt.so.3); repeatable")
    a = ap.parse_args()
    shapes = [s for s in SHAPES if s in a.shapes.split(",")]
    res = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_used": a.threads},
           "libraries": libraries(), "rounds": a.rounds, "warmup_steps": WARMUP,
           "statistic": "median step after 2 warm-up steps per process; median over alternating rounds",
           "model_flops_per_token": "6*N + 6*L*T*C", "shapes": {}}
    peak = gemm_peak(a.ferrotron, a.threads, 7, a.extra_blas)
    res["gemm_2048_gflops"] = peak
    res["gemm_peak_gflops"] = max(peak.values())
    print("GEMM 2048³:", {k: round(v, 1) for k, v in peak.items()}, flush=True)
    sides = {"ferrotron (auto)": lambda s: ferrotron(a.ferrotron, s, a.threads, "auto"),
             "ferrotron (builtin)": lambda s: ferrotron(a.ferrotron, s, a.threads, "builtin"),
             "pytorch": lambda s: pytorch(s, a.threads)}
    for shape in shapes:
        L, H, C, T, B, _ = SHAPES[shape]
        runs = {k: [] for k in sides}
        for r in range(a.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for k in order:
                runs[k].append(sides[k](shape))
        fpt = model_flops_per_token(L, C, T)
        entry = {"config": {"n_layer": L, "n_head": H, "n_embd": C, "seq": T, "batch": B, "vocab": VOCAB,
                            "params": n_params(L, C, T)}, "sides": {}}
        for k, rs in runs.items():
            ms = statistics.median(r["step_ms"] for r in rs)
            tps = B * T / (ms / 1e3)
            entry["sides"][k] = dict({kk: v for kk, v in rs[0].items() if kk not in ("step_ms", "step_ms_all")},
                                     step_ms=ms, round_medians_ms=[r["step_ms"] for r in rs], tokens_per_s=tps,
                                     model_gflops=fpt * tps / 1e9,
                                     fraction_of_peak=fpt * tps / 1e9 / res["gemm_peak_gflops"])
        entry["ratio_auto_vs_pytorch"] = entry["sides"]["ferrotron (auto)"]["tokens_per_s"] / entry["sides"]["pytorch"]["tokens_per_s"]
        entry["ratio_builtin_vs_pytorch"] = entry["sides"]["ferrotron (builtin)"]["tokens_per_s"] / entry["sides"]["pytorch"]["tokens_per_s"]
        entry["profile_ms"] = ferrotron(a.ferrotron, shape, a.threads, "auto", profile=True)["ops_ms"]
        res["shapes"][shape] = entry
        print(shape, {k: round(v["tokens_per_s"], 1) for k, v in entry["sides"].items()},
              f"ratio {entry['ratio_auto_vs_pytorch']:.2f}x", flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks/results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks/results/cpu_vs_pytorch.json"), "w") as fh:
        json.dump(res, fh, indent=2)
    with open(os.path.join(ROOT, "benchmarks/results/cpu_vs_pytorch.md"), "w") as fh:
        fh.write(markdown(res))


def markdown(res):
    m, lib = res["machine"], res["libraries"]
    auto_backend = next(iter(res["shapes"].values()))["sides"]["ferrotron (auto)"].get("backend", "?")
    lines = [f"CPU: {m['cpu']}, {m['threads_used']} threads, f32. Commit {lib['git_commit']}, {lib['rustc']}; "
             f"PyTorch {next(iter(res['shapes'].values()))['sides']['pytorch']['torch']} "
             f"(transformers {next(iter(res['shapes'].values()))['sides']['pytorch']['transformers']}, {lib['pytorch_blas']}).",
             f"ferrotron (auto) ran with: {auto_backend}.", "",
             f"Statistic: {res['statistic']} ({res['rounds']} rounds). Model FLOP/s = (6N + 6·L·T·C) × tokens/s.", "",
             "GEMM 2048³ f32, median GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in res["gemm_2048_gflops"].items())
             + f" — peak {res['gemm_peak_gflops']:.1f}.", "",
             "| shape | side | step ms | tokens/s | model GFLOP/s | of GEMM peak | vs PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s, e in res["shapes"].items():
        pt = e["sides"]["pytorch"]["tokens_per_s"]
        for k, v in e["sides"].items():
            lines.append(f"| {s} | {k} | {v['step_ms']:.0f} | {v['tokens_per_s']:.0f} | {v['model_gflops']:.1f} | "
                         f"{100 * v['fraction_of_peak']:.0f}% | {v['tokens_per_s'] / pt:.2f}× |")
    for s, e in res["shapes"].items():
        total = sum(e["profile_ms"].values())
        lines += ["", f"Per-op profile, {s}, ferrotron (auto), one profiled run (mean of the timed steps):", "",
                  "| op | ms | share |", "|---|---:|---:|"]
        for op, ms in list(e["profile_ms"].items())[:12]:
            lines.append(f"| {op} | {ms:.1f} | {100 * ms / total:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
