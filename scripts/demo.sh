#!/usr/bin/env bash
# Sets up everything and runs the demo: installs dependencies (scripts/install-deps.sh), builds
# the release binary, tokenises the `fortunes` corpus into data/fortunes/ (once), trains the tiny
# GPT-2 of inputs/tiny.toml with mpirun and prints where the outputs went.
#
# Usage: bash scripts/demo.sh [extra `ferrotron train` arguments...]
# Environment: FERROTRON_RANKS (default 2) sets the number of MPI ranks (data parallel).
# Works from any directory.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

say() { printf '\n==> %s\n' "$*"; }

say "installing dependencies"
bash scripts/install-deps.sh

# rustup's toolchain lives in ~/.cargo/bin, which a fresh shell may not have on PATH yet.
if [[ -z "${HOME:-}" ]]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  export HOME
fi
CARGO_ENV="${CARGO_HOME:-$HOME/.cargo}/env"
if [[ -f "$CARGO_ENV" ]]; then
  # shellcheck source=/dev/null
  . "$CARGO_ENV"
fi
# rustup's bin folder even without its env file (or before a new login shell).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "demo.sh: cargo not found after install-deps.sh" >&2; exit 1; }

say "building ferrotron (release)"
cargo build --release
BIN="$REPO_ROOT/target/release/ferrotron"
# Honour a CARGO_TARGET_DIR set by the caller.
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  BIN="$(cd "$CARGO_TARGET_DIR" && pwd)/release/ferrotron"
fi

if [[ -f data/fortunes/train_000000.bin ]]; then
  say "data/fortunes already prepared: skipping prepare-data"
else
  say "tokenising /usr/share/games/fortunes into data/fortunes"
  "$BIN" prepare-data --input /usr/share/games/fortunes --out data/fortunes
fi

# OpenMPI refuses to run as root without these, and more ranks than cores needs oversubscribe;
# vader's single-copy mechanism (CMA) warns inside containers.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none

RANKS="${FERROTRON_RANKS:-2}"
# --bind-to none: OpenMPI would pin a lone rank to one core; ferrotron sizes its thread pool to
# the cores per local rank itself.
say "training inputs/tiny.toml on $RANKS MPI rank(s)"
mpirun -np "$RANKS" --bind-to none "$BIN" train --config inputs/tiny.toml "$@"

RUN_DIR=runs/tiny
METRICS="$RUN_DIR/metrics.jsonl"
say "done; outputs:"
echo "  metrics:        $REPO_ROOT/$METRICS"
echo "  loss curve:     $REPO_ROOT/$RUN_DIR/loss.png"
echo "  HF weights:     $REPO_ROOT/$RUN_DIR/final/ (model.safetensors + config.json)"

# First and last validation loss. Metrics lines are JSON objects; validation lines carry
# "val_loss". Plain grep/sed so that this works without python3.
if [[ -f "$METRICS" ]]; then
  val_lines="$(grep '"val_loss"' "$METRICS" || true)"
  if [[ -n "$val_lines" ]]; then
    describe() {
      local step loss
      step="$(sed -n 's/.*"step"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$1")"
      loss="$(sed -n 's/.*"val_loss"[[:space:]]*:[[:space:]]*\([^,}[:space:]]*\).*/\1/p' <<<"$1")"
      echo "${loss:-?} (step ${step:-?})"
    }
    echo "  validation loss: first $(describe "$(head -n 1 <<<"$val_lines")"), last $(describe "$(tail -n 1 <<<"$val_lines")")"
  else
    echo "  (no validation loss recorded in $METRICS)"
  fi
else
  echo "demo.sh: warning: $METRICS was not written" >&2
fi
