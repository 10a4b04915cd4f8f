#!/usr/bin/env bash
# Runs the whole test suite, stopping at the first failing stage:
#   cargo fmt --check; cargo clippy --all-targets -D warnings; cargo build --release;
#   a local 4-host Slurm cluster (scripts/cluster-local.sh, for the sbatch template tests; taken
#   down at the end); cargo test --release (CPU GEMMs by `auto`: the system BLAS the setup
#   installs); then the numerical tests again with the built-in GEMM kernels
#   (FERROTRON_CPU_GEMM=builtin): unit tests, HF parity, every grid vs 1×1×1, checkpoints.
# Integration tests launch `mpirun` on the release binary ($FERROTRON_BIN). Works from any
# directory; expects the dependencies of scripts/install-deps.sh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if [[ -z "${HOME:-}" ]]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  export HOME
fi
CARGO_ENV="${CARGO_HOME:-$HOME/.cargo}/env"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$CARGO_ENV" ]]; then
  # shellcheck source=/dev/null
  . "$CARGO_ENV"
fi
# rustup's bin folder even without its env file (or before a new login shell).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found; run scripts/install-deps.sh" >&2; exit 1; }

# Tests launch mpirun: allow root, oversubscription, and no CMA (containers).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none

TARGET_DIR="$REPO_ROOT/target"
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  TARGET_DIR="$(mkdir -p "$CARGO_TARGET_DIR" && cd "$CARGO_TARGET_DIR" && pwd)"
fi
export FERROTRON_BIN="$TARGET_DIR/release/ferrotron"

# NVRTC and CUDA headers (from PyPI, no GPU needed) for the kernel compile-check test.
eval "$(bash scripts/install-nvrtc.sh --env)"

# Runs one stage; on failure names it and exits with its status.
stage() {
  local name="$1"
  shift
  printf '\n==> test.sh: %s\n' "$name"
  local rc=0
  "$@" || rc=$?
  if ((rc != 0)); then
    printf 'test.sh: FAILED at stage "%s" (exit %d)\n' "$name" "$rc" >&2
    exit "$rc"
  fi
}

stage "format (cargo fmt --check)" cargo fmt --check
stage "lint (cargo clippy --all-targets -- -D warnings)" cargo clippy --all-targets -- -D warnings
stage "build (cargo build --release)" cargo build --release
# A 4-host Slurm cluster of network namespaces on this machine for tests/slurm.rs and
# tests/cluster.rs (installs Debian's Slurm if missing; needs root), taken down at the end.
as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }
trap 'as_root bash scripts/cluster-local.sh down >/dev/null 2>&1 || true' EXIT
stage "local 4-host Slurm cluster (scripts/cluster-local.sh up 4)" as_root bash scripts/cluster-local.sh up 4
stage "tests (cargo test --release)" cargo test --release
stage "numerical tests with the built-in GEMM kernels (FERROTRON_CPU_GEMM=builtin)" \
  env FERROTRON_CPU_GEMM=builtin cargo test --release --lib \
  --test hf_parity --test parallel --test checkpoint --test mpi --test cli

printf '\ntest.sh: all stages passed\n'
