#!/usr/bin/env bash
# GFLOP/s of every CPU GEMM provider ferrotron finds on this machine (built-in `gemm` crate and
# each system BLAS library; more with --blas PATH), on 2048³ and GPT-2 small's products for
# 1024 tokens (forward, input gradient, weight gradient of QKV, MLP and LM head), timed side by
# side by `ferrotron bench-gemm` (median over alternating rounds). Backs `train.cpu_gemm = auto`'s
# search order. Writes benchmarks/results/cpu_gemm.{jsonl,md}.
#
#   bash benchmarks/cpu_gemm/run.sh [THREADS] [ROUNDS] [--blas /path/libmkl_rt.so.3 ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
THREADS="${1:-2}"; ROUNDS="${2:-7}"; shift $(( $# >= 2 ? 2 : $# ))
BIN="$ROOT/target/release/ferrotron"
[[ -x "$BIN" ]] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT="$ROOT/benchmarks/results"
mkdir -p "$OUT"
"$BIN" --threads "$THREADS" bench-gemm --json --rounds "$ROUNDS" "$@" > "$OUT/cpu_gemm.jsonl"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
commit="$(git -C "$ROOT" rev-parse --short HEAD)"
python3 - "$OUT/cpu_gemm.jsonl" "$cpu" "$commit" "$THREADS" "$ROUNDS" > "$OUT/cpu_gemm.md" <<'PY'
import json, sys
path, cpu, commit, threads, rounds = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
provs = list(dict.fromkeys(r["provider"] for r in rows))
shapes = list(dict.fromkeys(json.dumps(r["shape"]) for r in rows))
print(f"CPU: {cpu}, {threads} threads, f32, commit {commit}; median GFLOP/s over {rounds} alternating rounds.\n")
print("Providers: " + "; ".join(f"[{i + 1}] {p}" for i, p in enumerate(provs)) + "\n")
print("| m×n×k | " + " | ".join(f"[{i + 1}]" for i in range(len(provs))) + " |")
print("|---|" + "---:|" * len(provs))
for sj in shapes:
    s = json.loads(sj)
    name = f"{s['m']}×{s['n']}×{s['k']}" + (" aᵀ" if s["ta"] else "") + (" bᵀ" if s["tb"] else "")
    vals = {r["provider"]: r["gflops"] for r in rows if json.dumps(r["shape"]) == sj}
    print(f"| {name} | " + " | ".join(f"{vals.get(p, float('nan')):.1f}" for p in provs) + " |")
PY
cat "$OUT/cpu_gemm.md"
