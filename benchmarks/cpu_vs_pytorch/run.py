"""Training-step throughput of ferrotron vs PyTorch (HF GPT2LMHeadModel, eager f32, same thread
count) on this CPU machine, for two shapes. Writes benchmarks/results/cpu_vs_pytorch.{json,md}.

    python3 benchmarks/cpu_vs_pytorch/run.py [--threads 2] [--ferrotron target/release/ferrotron]

Needs: a release build, data/fortunes (scripts/demo.sh prepares it), and torch + transformers.
Both sides do the same work per step: forward, cross-entropy, backward, grad-norm clipping and
AdamW. ferrotron trains on the fortunes shards; PyTorch on random tokens (speed does not depend
on the token values). The figure is the median tokens/s over the timed steps. Run it on an
otherwise idle machine: another busy process on 2 cores halves any figure.
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

SHAPES = {
    # name: (n_layer, n_head, n_embd, seq, batch, warmup steps, timed steps)
    "tiny": (4, 4, 128, 128, 8, 3, 10),
    "gpt2-small-2layer": (2, 12, 768, 256, 4, 1, 4),
}


def ferrotron(bin_, shape, threads):
    L, H, C, T, B, warm, timed = SHAPES[shape]
    with tempfile.TemporaryDirectory() as d:
        m = os.path.join(d, "m.jsonl")
        sets = [f"model.n_layer={L}", f"model.n_head={H}", f"model.n_embd={C}", f"model.n_positions={T}",
                f"train.seq_len={T}", f"train.micro_batch_size={B}", f"train.global_batch_size={B}",
                f"train.steps={warm + timed}", "train.val_every=0", "train.val_batches=0",
                "log.plot=false", "log.save_final=false", f'log.out_dir="{d}"']
        cmd = [bin_, "--threads", str(threads), "train", "--config", os.path.join(ROOT, "inputs/tiny.toml"), "--metrics", m]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        rows = [json.loads(l) for l in open(m) if '"loss"' in l]
    tps = [r["tokens_per_s"] for r in rows[warm:]]
    return {"impl": "ferrotron", "tokens_per_s": statistics.median(tps), "step_ms": statistics.median(r["step_ms"] for r in rows[warm:]),
            "timed_steps": len(tps)}


def pytorch(shape, threads):
    L, H, C, T, B, warm, timed = SHAPES[shape]
    out = subprocess.run([sys.executable, os.path.join(HERE, "pytorch_bench.py"), "--n-layer", str(L), "--n-head", str(H),
                          "--n-embd", str(C), "--seq", str(T), "--batch", str(B), "--steps", str(timed),
                          "--warmup-steps", str(warm), "--threads", str(threads), "--attn", "sdpa"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ferrotron", default=os.path.join(ROOT, "target/release/ferrotron"))
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the median is reported")
    a = ap.parse_args()
    results = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_used": a.threads},
               "note": "f32, same thread count; each side run --repeats times, alternating; per run ferrotron "
                       "takes the median tokens/s over its timed steps, PyTorch the mean; the table shows the "
                       "median over runs",
               "shapes": {}}
    for shape in SHAPES:
        fs, ps = [], []
        for _ in range(a.repeats):
            fs.append(ferrotron(a.ferrotron, shape, a.threads))
            ps.append(pytorch(shape, a.threads))
        f = dict(fs[0], tokens_per_s=statistics.median(x["tokens_per_s"] for x in fs), runs=[x["tokens_per_s"] for x in fs])
        p = dict(ps[0], tokens_per_s=statistics.median(x["tokens_per_s"] for x in ps), runs=[x["tokens_per_s"] for x in ps])
        L, H, C, T, B, _, _ = SHAPES[shape]
        results["shapes"][shape] = {"config": {"n_layer": L, "n_head": H, "n_embd": C, "seq": T, "batch": B, "vocab": 50257},
                                    "ferrotron": f, "pytorch": p, "ratio": f["tokens_per_s"] / p["tokens_per_s"]}
        print(f"{shape}: ferrotron {f['tokens_per_s']:.0f} tok/s, pytorch {p['tokens_per_s']:.0f} tok/s, "
              f"ratio {f['tokens_per_s'] / p['tokens_per_s']:.2f}x", flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks/results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks/results/cpu_vs_pytorch.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    lines = [f"CPU: {results['machine']['cpu']}, {a.threads} threads, f32.", "",
             "| shape | ferrotron tok/s | PyTorch tok/s | ratio |", "|---|---:|---:|---:|"]
    for s, r in results["shapes"].items():
        lines.append(f"| {s} | {r['ferrotron']['tokens_per_s']:.0f} | {r['pytorch']['tokens_per_s']:.0f} | {r['ratio']:.2f}× |")
    with open(os.path.join(ROOT, "benchmarks/results/cpu_vs_pytorch.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
