#!/usr/bin/env bash
# A strong- or weak-scaling study on a Slurm cluster: one job per node count, then a report job.
#
#   scripts/scaling-study.sh --config inputs/X.toml --nodes 1,2,4 --mode strong|weak \
#       --out studies/NAME [--grid-per-node DP,TP,PP] [--cpus-per-task C] [--partition P]
#       [--steps N] [--set KEY=VALUE]... [--sbatch-arg ARG]... [--one-at-a-time] [--wait]
#
# Each node count N runs slurm/study.sbatch on N nodes with DP·TP·PP ranks per node
# (--grid-per-node, default 1,1,1): the grid is (N·DP, TP, PP) — tensor and pipeline groups
# stay as on one node, data parallelism grows with the nodes. Strong scaling keeps the global
# batch fixed (the config's train.global_batch_size); weak scaling grows it with the nodes
# (G · N / N_min, so the smallest run keeps the config's batch). Run N writes run.json and
# metrics.jsonl into OUT/nN/ (its Slurm output: OUT/nN/job.out). A last job, started after every
# run has ended (--dependency=afterany: failed runs are reported, not dropped), runs
# `ferrotron study report OUT`: OUT/summary.csv, throughput.png, efficiency.png and
# breakdown.png. OUT/study.json records the study and its job ids.
#
# Before submitting anything it checks the partition (sinfo): a node count the partition
# cannot give, or a global batch that does not split over a run's data-parallel ranks, is
# refused with one message. --one-at-a-time chains the runs (each starts after the previous one
# ended, --dependency=afterany), so that they never share nodes, network or file system with
# each other. --wait blocks until the report is written and exits with the report's status (non-zero when a run failed). $FERROTRON is the binary (default: ferrotron on
# PATH, else this checkout's target/release/ferrotron).
set -euo pipefail

die() { printf 'scaling-study: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'scaling-study: %s\n' "$*"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="" nodes="" mode="" out="" grid="1,1,1" cpus=1 partition="" steps="" wait=0 serial=0
sets=() sbatch_args=()
while (($#)); do
  # --opt=value is --opt value (so --sbatch-arg=--time=01:00:00 works).
  [[ "$1" == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
  case "$1" in
    --config) config="${2:?}"; shift 2 ;;
    --nodes) nodes="${2:?}"; shift 2 ;;
    --mode) mode="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --grid-per-node) grid="${2:?}"; shift 2 ;;
    --cpus-per-task) cpus="${2:?}"; shift 2 ;;
    --partition) partition="${2:?}"; shift 2 ;;
    --steps) steps="${2:?}"; shift 2 ;;
    --set) sets+=(--set "${2:?}"); shift 2 ;;
    --sbatch-arg) sbatch_args+=("${2:?}"); shift 2 ;;
    --wait) wait=1; shift ;;
    --one-at-a-time) serial=1; shift ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -n "$config" && -n "$nodes" && -n "$mode" && -n "$out" ]] \
  || die "--config, --nodes, --mode and --out are required (see --help)"
[[ -f "$config" ]] || die "config $config not found"
[[ "$mode" == strong || "$mode" == weak ]] || die "--mode must be strong or weak, not $mode"
[[ "$nodes" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--nodes must be a list like 1,2,4, not $nodes"
[[ "$grid" =~ ^[0-9]+,[0-9]+,[0-9]+$ ]] || die "--grid-per-node must be DP,TP,PP, not $grid"
[[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task must be a positive integer"
IFS=, read -r gdp gtp gpp <<<"$grid"
((gdp > 0 && gtp > 0 && gpp > 0)) || die "--grid-per-node entries must be > 0"
per_node=$((gdp * gtp * gpp))
IFS=, read -r -a counts <<<"$nodes"
mapfile -t counts < <(printf '%s\n' "${counts[@]}" | sort -n | uniq)
((counts[0] > 0)) || die "--nodes entries must be > 0"

if [[ -z "${FERROTRON:-}" ]]; then
  FERROTRON="$(command -v ferrotron || true)"
  [[ -n "$FERROTRON" ]] || FERROTRON="$REPO/target/release/ferrotron"
fi
[[ -x "$FERROTRON" ]] || die "ferrotron binary $FERROTRON not found (build it, or set FERROTRON)"
export FERROTRON="$(cd "$(dirname "$FERROTRON")" && pwd)/$(basename "$FERROTRON")"
command -v sbatch >/dev/null && command -v sinfo >/dev/null || die "sbatch/sinfo not found: run this on a Slurm login node"

# ---- the partition can give the largest node count ---------------------------------------------
if [[ -z "$partition" ]]; then
  partition="$(sinfo -h -o '%P' 2>/dev/null | sed -n 's/\*$//p' | head -1)"
  [[ -n "$partition" ]] || die "no default partition (sinfo); pass --partition"
fi
states="$(sinfo -h -p "$partition" -N -o '%N %t' 2>/dev/null | sort -u)" \
  || die "sinfo failed for partition $partition"
[[ -n "$states" ]] || die "partition $partition does not exist or has no nodes (sinfo -p $partition)"
usable="$(grep -cvE ' (down|drain|drng|fail|maint|futr|inval|unk)[*~#!%$@^-]*$' <<<"$states" || true)"
largest="${counts[-1]}"
if ((largest > usable)); then
  die "partition $partition has $usable usable node(s) ($(wc -l <<<"$states") in all); --nodes asks for $largest: drop the larger counts or use another partition"
fi

# ---- the batch splits over every run's data-parallel ranks --------------------------------------
toml_int() { sed -n "/^\[train\]/,/^\[/s/^$1 *= *\([0-9][0-9]*\).*/\1/p" "$config" | head -1; }
override_int() {
  local s v=""
  for s in "${sets[@]}"; do [[ "$s" =~ ^train\.$1=([0-9]+)$ ]] && v="${BASH_REMATCH[1]}"; done
  echo "$v"
}
gbs="$(override_int global_batch_size)"; gbs="${gbs:-$(toml_int global_batch_size)}"
mbs="$(override_int micro_batch_size)"; mbs="${mbs:-$(toml_int micro_batch_size)}"
[[ -n "$gbs" ]] || die "cannot read train.global_batch_size from $config (pass --set train.global_batch_size=G)"
mbs="${mbs:-1}"
declare -A batch
for n in "${counts[@]}"; do
  if [[ "$mode" == strong ]]; then g="$gbs"; else g=$((gbs * n / counts[0])); fi
  dp=$((n * gdp))
  ((g % (mbs * dp) == 0)) || die "$mode scaling at $n node(s): global batch $g does not split into micro-batches of $mbs over dp = $dp ranks (choose --nodes, train.global_batch_size or train.micro_batch_size so that it does)"
  batch[$n]="$g"
done

# ---- submit -------------------------------------------------------------------------------------
[[ -e "$out/study.json" ]] && die "$out already holds a study (study.json): choose another --out"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
name="$(basename "$out")"
step_set=()
[[ -n "$steps" ]] && step_set=(--set "train.steps=$steps")
runs_json="" ids=()
for n in "${counts[@]}"; do
  dir="$out/n$n"
  mkdir -p "$dir"
  after=()
  ((serial && ${#ids[@]})) && after=(--dependency "afterany:${ids[-1]}")
  id="$(sbatch --parsable -p "$partition" --nodes "$n" --ntasks-per-node "$per_node" "${after[@]}" \
    --cpus-per-task "$cpus" -J "study-$name-n$n" -o "$dir/job.out" "${sbatch_args[@]}" \
    "$REPO/slurm/study.sbatch" train "$dir" "$config" \
    --set "parallel.dp=$((n * gdp))" --set "parallel.tp=$gtp" --set "parallel.pp=$gpp" \
    --set "train.global_batch_size=${batch[$n]}" "${step_set[@]}" "${sets[@]}")" || {
    # Nothing half-submitted: cancel the runs already queued.
    ((${#ids[@]})) && scancel "${ids[@]}" 2>/dev/null
    die "sbatch failed for $n node(s); cancelled the ${#ids[@]} run(s) already submitted"
  }
  id="${id%%;*}"
  ids+=("$id")
  log "$n node(s): job $id, grid dp=$((n * gdp)) tp=$gtp pp=$gpp, global batch ${batch[$n]} -> $dir"
  runs_json+="${runs_json:+, }{\"nodes\": $n, \"dir\": \"n$n\", \"job_id\": \"$id\", \"global_batch_size\": ${batch[$n]}}"
done
dep="afterany:$(IFS=:; echo "${ids[*]}")"
report_args=(-p "$partition" --nodes 1 --ntasks 1 -J "study-$name-report" -o "$out/report.out"
  --dependency "$dep" "$REPO/slurm/study.sbatch" report "$out")
cat > "$out/study.json" <<EOF
{"name": "$name", "mode": "$mode", "config": "$config", "partition": "$partition",
 "nodes": [$(IFS=,; echo "${counts[*]}")],
 "grid_per_node": {"dp": $gdp, "tp": $gtp, "pp": $gpp}, "cpus_per_task": $cpus,
 "runs": [$runs_json]}
EOF
if ((wait)); then
  log "report job after $dep; waiting for it"
  rc=0
  sbatch --wait "${report_args[@]}" >/dev/null || rc=$?
  cat "$out/report.out" 2>/dev/null || true
  log "study $name: $out/summary.csv, $out/throughput.png, $out/efficiency.png, $out/breakdown.png"
  exit "$rc"
fi
rid="$(sbatch --parsable "${report_args[@]}")" || die "sbatch failed for the report job"
log "report: job ${rid%%;*} (after every run) -> $out/summary.csv and plots; squeue -j $(IFS=,; echo "${ids[*]}"),${rid%%;*}"
