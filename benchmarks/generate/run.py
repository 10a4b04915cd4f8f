"""Generation speed on this CPU: ferrotron's batched generation (1 rank) and pipelined
generation (pp = 2, one rank per core; pp = 4, oversubscribed) against transformers' `generate`
with KV cache, same threads in all, side by side; where ferrotron's time goes (its op profile);
plus activation recomputation's memory and step time for GPT-2 124M training. Writes
benchmarks/results/generate.{json,md}.

    PYTHONPATH=<torch site> python3 benchmarks/generate/run.py [--rounds 3]

Generation, per shape (GPT-2 f32 of random weights written by transformers, a batch of
`PROMPTS` prompts of `PROMPT_LEN` random token ids, `MAX_NEW` greedy tokens each):
  ferrotron 1 rank × 2 threads   `ferrotron --threads 2 generate --prompts … --temperature 0`
  ferrotron pp 2 (2 ranks × 1)   `mpirun -np 2 --bind-to core ferrotron --threads 1 generate --pp 2`
  ferrotron pp 4 (4 ranks × 1)   `mpirun -np 4 --oversubscribe --bind-to none … --pp 4`: 4 ranks
                                 share 2 cores, so this shows the pipeline's overheads, not its
                                 speed-up on 4 cores
  transformers (2 threads)       hf_side.py: `model.generate(use_cache=True, do_sample=False)`
Time: ferrotron's own "generated N tokens … in S s" line (the engine, model loading excluded);
transformers' time around `generate` after a 2-token warm-up call. Statistic, the same for every
side: generated tokens / seconds, one process per side and round, median over rounds whose side
order alternates. The greedy tokens of ferrotron and transformers are compared (equal ids =
the same computation).

Profile: after the timed rounds, one more run of the 1-rank and pp 2 sides with `--profile-ops`
(not timed): the share of the engine's wall time spent in backend ops and the largest ops.

Recomputation: `train` of GPT-2 124M (T 256, micro-batch 4, 1 rank × 2 threads) with
`train.recompute` none / selective / full: the activations saved per micro-batch (the log) and
the median step time after 2 warm-ups, median over rounds in alternating order.
"""
import argparse, json, os, platform, random, re, statistics, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.path.join(ROOT, "target/release/ferrotron")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
# name: (n_layer, n_head, n_embd, prompts, prompt_len, max_new)
SHAPES = {"tiny (L4 C128)": (4, 4, 128, 4, 32, 64), "gpt2-124m": (12, 12, 768, 4, 32, 32)}
VOCAB = 50257


def make_model(d, L, H, C):
    code = (f"from transformers import GPT2Config, GPT2LMHeadModel; import torch; torch.manual_seed(0);"
            f"GPT2LMHeadModel(GPT2Config(n_layer={L}, n_head={H}, n_embd={C}, n_positions=1024,"
            f" vocab_size={VOCAB})).save_pretrained({d!r}, safe_serialization=True)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def ferrotron(model, prompts_jsonl, max_new, pp, profile=False):
    if pp == 1:
        cmd = [BIN, "--threads", "2"]
    elif pp <= 2:
        cmd = ["mpirun", "-np", str(pp), "--bind-to", "core", BIN, "--threads", "1"]
    else:
        cmd = ["mpirun", "-np", str(pp), "--oversubscribe", "--bind-to", "none", BIN, "--threads", "1"]
    cmd += ["generate", "--hf", model, "--prompts", prompts_jsonl, "--max-new-tokens", str(max_new),
            "--temperature", "0", "--pp", str(pp), "--json"] + (["--profile-ops"] if profile else [])
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"ferrotron failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    m = re.search(r"generated (\d+) tokens .* in ([0-9.]+) s", p.stderr)
    ids = [json.loads(l)["ids"] for l in p.stdout.splitlines() if l.startswith("{")]
    if profile:
        return re.findall(r"op profile of rank (\d+) \(stage (\d+), tp \d+\): ops ([0-9.]+) of ([0-9.]+) ms \(\d+%\): (.*)", p.stderr)
    return int(m.group(1)) / float(m.group(2)), ids


def hf(model, prompts_json, max_new):
    p = subprocess.run([sys.executable, os.path.join(HERE, "hf_side.py"), model, prompts_json, str(max_new), "2"],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if p.returncode != 0:
        sys.exit(f"transformers side failed:\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    n = sum(len(x) for x in r["ids"])
    return n / r["seconds"], r["ids"]


def generation(rounds):
    rows = []
    for name, (L, H, C, B, T, N) in SHAPES.items():
        with tempfile.TemporaryDirectory() as d:
            make_model(d, L, H, C)
            rng = random.Random(1)
            prompts = [[rng.randrange(VOCAB) for _ in range(T)] for _ in range(B)]
            pj, pl = os.path.join(d, "prompts.json"), os.path.join(d, "prompts.jsonl")
            json.dump(prompts, open(pj, "w"))
            open(pl, "w").write("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
            sides = {"ferrotron 1 rank x 2 threads": lambda: ferrotron(d, pl, N, 1),
                     "ferrotron pp 2 (2 ranks x 1 thread)": lambda: ferrotron(d, pl, N, 2),
                     "ferrotron pp 4 (4 ranks x 1 thread, oversubscribed)": lambda: ferrotron(d, pl, N, 4),
                     "transformers generate (2 threads)": lambda: hf(d, pj, N)}
            rates = {k: [] for k in sides}
            ids = {}
            for r in range(rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for k in order:
                    tps, got = sides[k]()
                    rates[k].append(tps)
                    ids[k] = got
            med = {k: statistics.median(v) for k, v in rates.items()}
            profile = {}
            for pp in (1, 2):
                profile[f"pp {pp}"] = [
                    {"rank": int(r), "stage": int(st), "ops_ms": float(o), "wall_ms": float(w),
                     "top": [x.strip() for x in top.split(",")[:4]]}
                    for r, st, o, w, top in ferrotron(d, pl, N, pp, profile=True)]
            same = all(v == ids["transformers generate (2 threads)"] for v in ids.values())
            rows.append({"shape": name, "layers": L, "width": C, "prompts": B, "prompt_len": T, "max_new": N,
                         "tokens_per_s": med, "rounds": rates, "greedy_ids_equal": same,
                         "profile": profile})
            print(rows[-1], flush=True)
    return rows


def recompute(rounds):
    settings = ["none", "selective", "full"]
    times = {s: [] for s in settings}
    saved = {}
    for r in range(rounds):
        for s in (settings if r % 2 == 0 else list(reversed(settings))):
            with tempfile.TemporaryDirectory() as d:
                m = os.path.join(d, "m.jsonl")
                sets = ["model.n_layer=12", "model.n_head=12", "model.n_embd=768", "model.n_positions=256",
                        "train.seq_len=256", "train.micro_batch_size=4", "train.global_batch_size=4",
                        "train.steps=5", "train.val_every=0", "train.val_batches=0", "log.plot=false",
                        "log.save_final=false", f'log.out_dir="{d}"', f'train.recompute="{s}"']
                cmd = [BIN, "--threads", "2", "train", "--config", os.path.join(ROOT, "inputs/tiny.toml"), "--metrics", m]
                for x in sets:
                    cmd += ["--set", x]
                p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"train failed: {p.stderr[-2000:]}")
                saved[s] = float(re.search(r"activations saved per micro-batch on stage 0: ([0-9.]+) MiB", p.stderr).group(1))
                rows = [json.loads(l) for l in open(m)]
                times[s].append(statistics.median(x["step_ms"] for x in rows if "loss" in x and x["step"] > 2))
    out = {s: {"saved_mib": saved[s], "step_ms": statistics.median(times[s]), "rounds": times[s]} for s in settings}
    print(out, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import importlib
    versions = {}
    for mod in ("torch", "transformers"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception as e:  # noqa: BLE001
            sys.exit(f"{mod} is needed (PYTHONPATH): {e}")
    gen = generation(a.rounds)
    rec = recompute(max(2, a.rounds - 1))
    res = {"cpu": cpu, "cores": os.cpu_count(), "commit": commit, "versions": versions,
           "python": platform.python_version(), "generation": gen, "recompute_gpt2_124m": rec}
    out = os.path.join(ROOT, "benchmarks/results")
    json.dump(res, open(os.path.join(out, "generate.json"), "w"), indent=2)
    lines = [f"CPU: {cpu} ({os.cpu_count()} cores), commit {commit}, torch {versions['torch']}, "
             f"transformers {versions['transformers']}. `PYTHONPATH=… python3 benchmarks/generate/run.py "
             f"--rounds {a.rounds}`: median over rounds of generated tokens / s (greedy, random weights).", "",
             "| shape | prompts × (prompt + new) | ferrotron 1 rank × 2 threads | ferrotron pp 2 (2 × 1) | ferrotron pp 4 (4 × 1, oversubscribed) | transformers (2 threads) | same greedy ids |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in gen:
        t = r["tokens_per_s"]
        lines.append(f"| {r['shape']} | {r['prompts']} × ({r['prompt_len']} + {r['max_new']}) | "
                     f"{t['ferrotron 1 rank x 2 threads']:.1f} | {t['ferrotron pp 2 (2 ranks x 1 thread)']:.1f} | "
                     f"{t['ferrotron pp 4 (4 ranks x 1 thread, oversubscribed)']:.1f} | "
                     f"{t['transformers generate (2 threads)']:.1f} | {'yes' if r['greedy_ids_equal'] else 'NO'} |")
    lines += ["", "Where ferrotron's generation time goes (`--profile-ops`, one untimed run per side): "
              "backend ops' share of the engine's wall time per rank, and the largest ops "
              "(the rest is sampling, messages and waiting for the other stages):", "",
              "| shape | side | rank (stage) | ops / wall | largest ops |", "|---|---|---|---:|---|"]
    for r in gen:
        for side, ranks in r["profile"].items():
            for x in ranks:
                lines.append(f"| {r['shape']} | {side} | {x['rank']} ({x['stage']}) | "
                             f"{x['ops_ms']:.0f} / {x['wall_ms']:.0f} ms | {'; '.join(x['top'])} |")
    lines += ["", "Activation recomputation, GPT-2 124M training (T 256, micro-batch 4, 1 rank × 2 threads), "
              "median step after 2 warm-ups, median over rounds:", "",
              "| train.recompute | activations saved per micro-batch | step ms | vs none |", "|---|---:|---:|---:|"]
    base = rec["none"]["step_ms"]
    for s, v in rec.items():
        lines.append(f"| {s} | {v['saved_mib']:.1f} MiB | {v['step_ms']:.0f} | {100 * (v['step_ms'] / base - 1):+.1f}% |")
    open(os.path.join(out, "generate.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
