#!/usr/bin/env bash
# Runs on the GPU machine (through the device tool): ferrotron's CUDA backend and PyTorch on
# GPT-2 124M, T=1024, one GPU. Expects the carried binary and libraries in .carry/ (see
# benchmarks/README.md) and writes JSON lines to $OUT/gpu_gpt2.jsonl.
#
#   VARIANTS  which ferrotron variants, in order (default "bf16+flash+gelu bf16+flash tf32+flash
#             bf16 tf32 fp32"): a GEMM precision, then +flash (train.flash_attention) and/or
#             +gelu (train.fuse_gelu, GELU in the cuBLASLt epilogues)
#   PYTORCH   which PyTorch runs (default "eager compile"; "" for none)
#   DEADLINE  a time (seconds since the epoch) after which nothing new starts; every run is
#             also cut at the deadline (default: none). Device time is scarce: one call
#             should do as much as fits, most valuable first.
#   PROFILE   1 (default): after the first variant that runs, 6 more steps of it with
#             log.profile_ops, its per-op table saved as $OUT/op_profile_<variant>_B<batch>.txt
set -uo pipefail
source .carry/gpu_env.sh
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "${OUT:-/tmp}"
out=${OUT:-/tmp}/gpu_gpt2.jsonl
: > "$out"
VARIANTS=${VARIANTS:-"bf16+flash+gelu bf16+flash tf32+flash bf16 tf32 fp32"}
PYTORCH=${PYTORCH-"eager compile"}
DEADLINE=${DEADLINE:-$(( $(date +%s) + 100000 ))}
# Seconds a run may take: at most $1, and never past the deadline (0 when it has passed).
cap() { local l=$(( DEADLINE - $(date +%s) )); (( l < 0 )) && l=0; echo $(( l < $1 ? l : $1 )); }
peak_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & echo $!; }
# Variants: GEMM precision, optionally with flash attention (train.flash_attention), which
# stores no [T, T] probabilities and so may fit a larger micro-batch, and fused GELU.
PROFILE=${PROFILE:-1}
profiled=0
# ft SECONDS PREC FLASH GELU B STEPS OUTDIR [--set k=v ...]: one GPT-2 124M training run, log
# to stdout.
ft() {
  local t=$1 prec=$2 flash=$3 gelu=$4 b=$5 steps=$6 dir=$7; shift 7
  timeout "$t" .carry/ferrotron train --config inputs/gpt2-124m.toml --set train.backend=cuda --set train.precision=$prec \
    --set train.flash_attention=$flash --set train.fuse_gelu=$gelu --set train.micro_batch_size=$b --set train.global_batch_size=$b --set train.steps=$steps --set optim.warmup_steps=0 \
    --set train.val_every=0 --set train.val_batches=0 --set log.plot=false --set log.save_final=false \
    --set 'data.train=".carry/data/fortunes/train_*.bin"' --set 'data.val=".carry/data/fortunes/val_*.bin"' \
    --set "log.out_dir=\"$dir\"" "$@" 2>&1
}
for v in $VARIANTS; do
  prec=${v%%+*}; flash=false; gelu=false; label=$prec; sizes="32 16 8"
  if [[ $v == *+flash* ]]; then flash=true; label=$label-flash; sizes="64 32 16 8"; fi
  if [[ $v == *+gelu* ]]; then gelu=true; label=$label-gelu; fi
  for B in $sizes; do
    t=$(cap 240); (( t < 30 )) && { echo "deadline: $label B=$B not run"; break 2; }
    pid=$(peak_mem)
    if ft "$t" $prec $flash $gelu $B 10 "/tmp/ft-$label-$B" > /tmp/ft.log; then
      kill $pid
      python3 - "$label" "$B" "/tmp/ft-$label-$B/metrics.jsonl" >> "$out" <<'PY'
import json, statistics, sys
prec, B, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(path) if '"loss"' in l][3:]
tps = statistics.median(r["tokens_per_s"] for r in rows)
mem = max(int(x) for x in open("/tmp/mem.log").read().split() if x.strip().isdigit())
n, L, T, C = 124439808, 12, 1024, 768
print(json.dumps({"impl": f"ferrotron-cuda-{prec}", "batch": B, "seq": T, "tokens_per_s": tps,
                  "step_ms": statistics.median(r["step_ms"] for r in rows),
                  "mfu": tps * (6 * n + 6 * L * T * C) / 989e12, "peak_mem_gib": mem / 1024,
                  "losses": [r["loss"] for r in rows],
                  "peak_mem_note": "nvidia-smi memory.used (whole process incl. CUDA context)"}))
PY
      if [[ $PROFILE == 1 && $profiled == 0 ]] && t=$(cap 120) && (( t >= 30 )); then
        profiled=1
        ft "$t" $prec $flash $gelu $B 6 "/tmp/ft-prof-$label-$B" --set log.profile_ops=true > /tmp/ft-prof.log
        sed -n '/op profile/,$p' /tmp/ft-prof.log | grep -v '^trained\|^metrics' > "${OUT:-/tmp}/op_profile_${label}_B$B.txt"
        cat "${OUT:-/tmp}/op_profile_${label}_B$B.txt"
      fi
      break
    else
      kill $pid; echo "ferrotron $label B=$B failed:"; tail -3 /tmp/ft.log
      cp /tmp/ft.log "${OUT:-/tmp}/ft-$label-$B.log" 2>/dev/null
      # Only running out of memory is a reason to try a smaller micro-batch.
      grep -qi "out of memory\|OUT_OF_MEMORY" /tmp/ft.log || { echo "($label: not a memory failure; next variant)"; break; }
    fi
  done
done
# PyTorch on the micro-batch ferrotron's first run used (same work per step).
PB=$(python3 -c "import json;print([json.loads(l) for l in open('$out')][0]['batch'])" 2>/dev/null || echo 16)
for mode in $PYTORCH; do
  extra=""; [[ $mode == compile ]] && extra="--compile"
  t=$(cap 300); (( t < 60 )) && { echo "deadline: pytorch $mode not run"; continue; }
  timeout "$t" python3 benchmarks/gpu_gpt2/pytorch_gpt2.py --batch $PB $extra 2>/tmp/pt.err | tail -1 >> "$out" || { echo "pytorch $mode failed"; tail -5 /tmp/pt.err; }
done
cat "$out"
