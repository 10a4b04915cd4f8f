#!/usr/bin/env bash
# prepare-data throughput: tokens/s and tokens/s per core on 1 rank × 1 thread, 1 rank × 2
# threads and 2 MPI ranks × 1 thread, for the same documents as plain text (many small files),
# gzip'd JSONL and (when pyarrow is importable) snappy Parquet (8 larger files each).
#
#   bash benchmarks/data/prepare.sh [ROUNDS]
#
# Corpus: every fortune file of /usr/share/games/fortunes copied 8 times (the text form), and
# the same documents written by Python as 8 JSONL.gz / Parquet files. Each configuration runs
# ROUNDS times (default 3) into a fresh output folder, configurations alternating within a
# round. Reported: the median of the time prepare-data itself logs (rank 0, from after MPI start-up
# to the manifest written: reading, tokenising, writing; the tokenizer's tables load inside
# it), from which tokens/s; and the median wall time of the whole command (process and MPI
# start-up included: mpirun alone takes seconds here). Writes
# benchmarks/results/data_prepare.{json,md}. Needs an idle machine.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${1:-3}"
BIN="$REPO/target/release/ferrotron"
[[ -x "$BIN" ]] || { echo "prepare.sh: build first (cargo build --release)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferrotron-prepbench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/text" "$WORK/jsonl" "$WORK/parquet"
for i in 1 2 3 4 5 6 7 8; do
  for f in /usr/share/games/fortunes/*; do
    [[ "$f" == *.dat || "$f" == *.u8 || -d "$f" ]] && continue
    cp "$f" "$WORK/text/$(basename "$f")-$i"
  done
done
HAVE_PARQUET=$(python3 - "$WORK" <<'PY'
import glob, gzip, json, os, sys
work = sys.argv[1]
docs = []
for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
    if f.endswith((".dat", ".u8")) or os.path.isdir(f):
        continue
    try:
        text = open(f, encoding="utf-8").read()
    except UnicodeDecodeError:
        continue
    cur = []
    for line in text.split("\n"):
        if line.rstrip("\r") == "%":
            docs.append("\n".join(cur)); cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
docs = [d.strip() for d in docs if d.strip()]
for i in range(1, 9):
    with gzip.open(f"{work}/jsonl/docs-{i}.jsonl.gz", "wt", encoding="utf-8") as out:
        for d in docs:
            out.write(json.dumps({"text": d}) + "\n")
try:
    import pyarrow as pa, pyarrow.parquet as pq
    for i in range(1, 9):
        pq.write_table(pa.table({"text": docs}), f"{work}/parquet/docs-{i}.parquet", compression="snappy")
    print(f"pyarrow {pa.__version__}")
except ImportError:
    print("")
PY
)
formats="text jsonl"
[[ -n "$HAVE_PARQUET" ]] && formats="$formats parquet"
configs="1x1 1x2 2x1" # ranks x threads

calc() { python3 -c "print($1)"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

one_run() { # format ranks threads -> "internal_seconds wall_seconds" (output left in $WORK/out)
  local fmt="$1" np="$2" th="$3" t0 t1
  rm -rf "$WORK/out"
  t0=$(date +%s.%N)
  if [[ "$np" == 1 ]]; then
    "$BIN" --threads "$th" prepare-data --input "$WORK/$fmt" --out "$WORK/out" --no-progress >"$WORK/prep.out" 2>&1
  else
    mpirun -np "$np" "$BIN" --threads "$th" prepare-data --input "$WORK/$fmt" --out "$WORK/out" --no-progress >"$WORK/prep.out" 2>&1
  fi || { cat "$WORK/prep.out" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$(sed -n 's/.*shard files in .* (\([0-9.]*\) s on .*/\1/p' "$WORK/prep.out") $(calc "$t1 - $t0")"
}

declare -A times walls
for ((r = 0; r < ROUNDS; r++)); do
  for fmt in $formats; do
    for c in $configs; do
      read -r s w < <(one_run "$fmt" "${c%x*}" "${c#*x}")
      times[$fmt/$c]+="$s "
      walls[$fmt/$c]+="$w "
    done
  done
done
rows=()
for fmt in $formats; do
  one_run "$fmt" 1 2 >/dev/null
  toks=$(sed -n 's/.*: \([0-9]*\) train tokens, \([0-9]*\) val tokens.*/\1 \2/p' "$WORK/prep.out" | awk '{print $1+$2}')
  files=$(ls "$WORK/$fmt" | wc -l)
  bytes=$(du -sb "$WORK/$fmt" | cut -f1)
  for c in $configs; do
    np="${c%x*}" th="${c#*x}"
    secs=$(printf '%s\n' ${times[$fmt/$c]} | median)
    wall=$(printf '%s\n' ${walls[$fmt/$c]} | median)
    row="$(printf '{"format": "%s", "files": %d, "input_bytes": %d, "ranks": %d, "threads": %d, "tokens": %d, "seconds": %s, "wall_seconds": %.2f, "tokens_per_s": %.0f, "tokens_per_s_per_core": %.0f}' \
      "$fmt" "$files" "$bytes" "$np" "$th" "$toks" "$secs" "$wall" "$(calc "$toks / $secs")" "$(calc "$toks / $secs / ($np * $th)")")"
    echo "$row"
    rows+=("$row")
  done
done

out="$REPO/benchmarks/results"
tiktoken=$(sed -n '/^name = "tiktoken-rs"/{n;s/version = "\(.*\)"/\1/p}' "$REPO/Cargo.lock")
parquet=$(sed -n '/^name = "parquet"/{n;s/version = "\(.*\)"/\1/p}' "$REPO/Cargo.lock")
{
  echo "{\"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p')\", \"cores\": $(nproc), \"commit\": \"$(git -C "$REPO" rev-parse --short=12 HEAD)\","
  echo " \"libraries\": \"tiktoken-rs $tiktoken, parquet $parquet, $(mpirun --version | head -1)\", \"parquet_writer\": \"${HAVE_PARQUET:-none}\","
  echo " \"rounds\": $ROUNDS, \"runs\": [$(IFS=,; echo "${rows[*]}")]}"
} > "$out/data_prepare.json"
python3 - "$out/data_prepare.json" "$out/data_prepare.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
L = ["# prepare-data throughput over threads and MPI ranks", "",
     f"CPU: {d['cpu']}, {d['cores']} cores; commit {d['commit']}; {d['libraries']}.",
     f"Median of {d['rounds']} rounds (configurations alternating), each into a fresh output folder: seconds = the time",
     "prepare-data logs (after MPI start-up, to the manifest written), tokens/s from it; wall = the whole command.",
     "the fortunes corpus copied 8 times: as text (many small files), and as 8 gzip'd JSONL"
     + (f" and 8 snappy Parquet files ({d['parquet_writer']})." if d["parquet_writer"] != "none" else " files (no pyarrow: no Parquet row)."),
     "The outputs of all configurations are byte-identical (tests/data.rs checks this).", "",
     "| input | files | MB | ranks × threads | tokens | seconds | wall (s) | tokens/s | tokens/s per core |",
     "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
for r in d["runs"]:
    L.append(f"| {r['format']} | {r['files']} | {r['input_bytes']/1e6:.1f} | {r['ranks']} × {r['threads']} | {r['tokens']:,} | "
             f"{r['seconds']:.2f} | {r['wall_seconds']:.2f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_core']:,.0f} |")
open(sys.argv[2], "w").write("\n".join(L) + "\n")
PY
cat "$out/data_prepare.md"
