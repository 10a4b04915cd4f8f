#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one device call, inside a time budget: the GPU
# tests (most valuable first), then the gpu_gpt2 benchmark with the time left. Logs and
# results go to $OUT (the device tool brings them back). Prepare with `bash scripts/gpu-carry.sh`,
# then:
#
#   device: run(carry=[".carry"], timeout_s=600, command="bash scripts/gpu-session.sh 540")
#
# $1: seconds this script may take in all (default 540). Device time is scarce (15 minutes a
# session, start-up included): nothing here waits past the budget, and a test binary that hangs
# is cut at its share, not allowed to eat the benchmark's time.
#
# The GPU tests are #[ignore]d everywhere (so a machine without a GPU shows them as ignored,
# never as passed); here they run with --include-ignored and FERROTRON_REQUIRE_GPU=1, so a
# missing device, a library that does not load or a check that cannot run fails them. The
# script exits non-zero when any test binary failed, was cut by its time cap, or did not run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FERROTRON_REQUIRE_GPU=1
failed=0
BUDGET=${1:-540}
END=$(( $(date +%s) + BUDGET ))
O=${OUT:-/tmp/gpu-session}
mkdir -p "$O"
source .carry/gpu_env.sh
export PATH=$PATH:/usr/local/cuda/bin
left() { echo $(( END - $(date +%s) )); }
{ nvidia-smi; echo; nvidia-smi -L; } > "$O/nvidia-smi.txt" 2>&1
summary="$O/summary.txt"
: > "$summary"
# Test binaries, most valuable first, each with at most the given seconds: the kernels against
# their twins (flash attention, vocab-parallel, adamw_multi have never run on a GPU), the
# cuBLASLt wrapper (passed on an H100 before; the GELU epilogues are new), the model (HF parity,
# 20 steps vs CPU with and without flash and fused GELU, bf16), the multi-rank runs sharing the
# GPU.
for spec in cuda_kernels:90 cuda_gemm:60 cuda_model:150 cuda_parallel:200; do
  t=${spec%%:*}; cap=${spec##*:}; l=$(left)
  (( l - 200 < cap )) && cap=$(( l - 200 ))   # keep 200 s for the benchmark
  if (( cap < 20 )); then echo "$t: not run (budget)" >> "$summary"; failed=1; continue; fi
  s0=$(date +%s)
  timeout "$cap" ".carry/$t" --include-ignored --nocapture --test-threads=1 > "$O/$t.log" 2>&1
  rc=$?
  (( rc != 0 )) && failed=1
  res=$(grep -h "^test result" "$O/$t.log" | tail -1)
  echo "$t: rc=$rc in $(( $(date +%s) - s0 )) s (cap $cap) ${res:-no result line}" >> "$summary"
  grep -h "^test .* FAILED\|^test .* ok$" "$O/$t.log" >> "$summary"
done
cat "$summary"
# The benchmark with what is left: the flash and fused-GELU variants (never measured) first.
l=$(left)
if (( l > 60 )); then
  DEADLINE=$(( END - 5 )) VARIANTS="${VARIANTS:-bf16+flash+gelu bf16+flash tf32+flash bf16 tf32}" PYTORCH="${PYTORCH-eager compile}" \
    bash benchmarks/gpu_gpt2/run_device.sh > "$O/bench.log" 2>&1
  cat "$O/bench.log"
else
  echo "benchmark: not run (budget, $l s left)" | tee -a "$summary"
fi
# With any time left: the kernels not yet run on a GPU under compute-sanitizer (races between
# lanes and warps, barrier misuse, out-of-bounds accesses), each tool capped.
for tool in racecheck synccheck memcheck; do
  l=$(( $(left) - 5 )); (( l < 20 )) && { echo "sanitizer $tool: not run (budget)" >> "$summary"; continue; }
  cap=$(( l < 90 ? l : 90 ))
  timeout "$cap" compute-sanitizer --tool "$tool" --error-exitcode 3 .carry/cuda_kernels flash vocab adamw_multi cached --include-ignored \
    --test-threads=1 > "$O/sanitizer-$tool.log" 2>&1
  rc=$?
  (( rc == 3 )) && failed=1 # the tool found errors (a cut run, 124, is reported, not failed)
  echo "sanitizer $tool: rc=$rc (cap $cap s) $(grep -h 'ERROR SUMMARY' "$O/sanitizer-$tool.log" | tail -1)" >> "$summary"
done
cat "$summary"
if (( failed )); then
  echo "gpu-session: some GPU tests failed, were cut or did not run (see $summary)"
  exit 1
fi
exit 0
