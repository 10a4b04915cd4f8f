#!/usr/bin/env bash
# Data-path figures: training start-up time and peak resident memory against the size of the
# token data (synthetic 100 MB, 1 GB and 4 GB shards), this build against BEFORE (a build of
# the commit before the memory-mapped loader, whose loader read every shard into memory).
# prepare-data throughput is benchmarks/data/prepare.sh.
#
#   bash benchmarks/data/run.sh BEFORE_BIN [ROUNDS]
#
# BEFORE_BIN: a release binary built from the commit before the memory-mapped loader, e.g.
#   git worktree add /tmp/ft-before f53462b~1 && (cd /tmp/ft-before && cargo build --release)
# Start-up time = wall time of a 1-step run of a tiny model (n_layer 1, T 256, batch 1, no
# validation) minus nothing: the step itself is a few ms, the rest is loading. Each size runs
# ROUNDS times (default 3), before and after alternating; the median is reported. Peak memory
# is the process's VmHWM (`/usr/bin/time -v`'s maximum resident set size). Writes
# benchmarks/results/data.{json,md}. Needs about 6 GB of free disk under $TMPDIR and an idle
# machine.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BEFORE="${1:?usage: run.sh BEFORE_BIN [ROUNDS]}"
ROUNDS="${2:-3}"
AFTER="$REPO/target/release/ferrotron"
[[ -x "$AFTER" && -x "$BEFORE" ]] || { echo "run.sh: need $AFTER and $BEFORE" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferrotron-databench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# A Python with numpy (Debian's python3-numpy may sit behind another python3 on PATH).
NUMPY_PY=""
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import numpy' 2>/dev/null; then NUMPY_PY="$p"; break; fi
done
[[ -n "$NUMPY_PY" ]] || { echo "run.sh: no python3 with numpy (apt-get install python3-numpy)" >&2; exit 1; }

# A shard of N pseudo-random token ids (< 50257), written with numpy in 32 Mi-token pieces.
make_shard() {
  "$NUMPY_PY" - "$1" "$2" <<'PY'
import struct, sys
import numpy as np
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(1)
with open(path, "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    left = n
    while left:
        k = min(left, 1 << 25)
        f.write(rng.integers(0, 50257, size=k, dtype=np.uint16).astype("<u2").tobytes())
        left -= k
PY
}

cat > "$WORK/cfg.toml" <<EOF
[model]
vocab_size = 50257
n_positions = 256
n_embd = 32
n_layer = 1
n_head = 2
[data]
train = "$WORK/train.bin"
val = "$WORK/train.bin"
[train]
steps = 1
micro_batch_size = 1
global_batch_size = 1
seq_len = 256
val_every = 0
val_batches = 0
[log]
out_dir = "$WORK/run"
plot = false
save_final = false
EOF

# One timed run: prints "seconds max_rss_kib".
one_run() {
  local bin="$1" t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$WORK/rss" "$bin" --threads 2 train --config "$WORK/cfg.toml" >/dev/null 2>"$WORK/err" \
    || { cat "$WORK/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$(calc "$t1 - $t0") $(tail -1 "$WORK/rss")"
}

calc() { python3 -c "print($1)"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

rows=()
for spec in "100MB 50000000" "1GB 500000000" "4GB 2000000000"; do
  read -r label n <<<"$spec"
  rm -f "$WORK/train.bin"
  make_shard "$WORK/train.bin" "$n"
  sync
  declare -a tb=() ta=() mb=() ma=()
  for ((r = 0; r < ROUNDS; r++)); do
    read -r s m < <(one_run "$BEFORE"); tb+=("$s"); mb+=("$m")
    read -r s m < <(one_run "$AFTER"); ta+=("$s"); ma+=("$m")
  done
  row="$(printf '{"data": "%s", "tokens": %s, "startup_s_before": %s, "startup_s_after": %s, "peak_rss_mib_before": %.1f, "peak_rss_mib_after": %.1f}' \
    "$label" "$n" "$(printf '%s\n' "${tb[@]}" | median)" "$(printf '%s\n' "${ta[@]}" | median)" \
    "$(calc "$(printf '%s\n' "${mb[@]}" | median) / 1024")" "$(calc "$(printf '%s\n' "${ma[@]}" | median) / 1024")")"
  echo "$row"
  rows+=("$row")
done
rm -f "$WORK/train.bin"

out="$REPO/benchmarks/results"
{
  echo "{\"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p')\", \"cores\": $(nproc), \"commit\": \"$(git -C "$REPO" rev-parse --short=12 HEAD)\","
  echo " \"before\": \"$("$BEFORE" --version)\", \"rounds\": $ROUNDS, \"loader\": [$(IFS=,; echo "${rows[*]}")]}"
} > "$out/data.json"
python3 - "$out/data.json" "$out/data.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
L = ["# Data path: start-up and memory against dataset size", "",
     f"CPU: {d['cpu']}, {d['cores']} cores; commit {d['commit']}; median of {d['rounds']} rounds, before/after alternating.",
     "Before = the commit before the memory-mapped loader (every shard read into memory and checked at start);",
     "after = this commit (shards memory-mapped, windows read and checked when trained on).",
     "One rank, 2 threads, a 1-layer d=32 model, T=256, one step, no validation: start-up = wall time of that run.", "",
     "| data | tokens | start-up before (s) | start-up after (s) | peak RSS before (MiB) | peak RSS after (MiB) |",
     "|---|---:|---:|---:|---:|---:|"]
for r in d["loader"]:
    L.append(f"| {r['data']} | {r['tokens']:,} | {r['startup_s_before']:.2f} | {r['startup_s_after']:.2f} | {r['peak_rss_mib_before']:.0f} | {r['peak_rss_mib_after']:.0f} |")
L += ["", "The after column grows only by the sampler's permutation (4 bytes per window of T tokens).",
      "prepare-data throughput: benchmarks/data/prepare.sh, results/data_prepare.md."]
open(sys.argv[2], "w").write("\n".join(L) + "\n")
PY
cat "$out/data.md"
