#!/usr/bin/env bash
# Installs what ferrotron needs on Debian/Ubuntu: the system packages (compiler, OpenMPI, HDF5,
# OpenBLAS and BLIS for the CPU backend's matrix products,
# the `fortunes` demo corpus, a font for loss plots, python3) and a Rust toolchain via rustup
# (Debian's own rustc is too old). Idempotent: anything already present is skipped.
# Works as root or through sudo; exits non-zero with a message if it cannot install.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# Oldest rustc the crate builds with (Cargo.toml rust-version).
MIN_RUST_MINOR=91

PACKAGES=(
  build-essential pkg-config libclang-dev clang ca-certificates curl git
  libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools
  fortunes fonts-dejavu-core python3 python3-pip python3-numpy python3-h5py
  libopenblas0-pthread libblis4-pthread
)

# A clean environment (e.g. `env -i` under chroot) may lack HOME; rustup needs it.
if [[ -z "${HOME:-}" ]]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  [[ -n "$HOME" ]] || die "HOME is not set and cannot be determined"
  export HOME
fi
CARGO_DIR="${CARGO_HOME:-$HOME/.cargo}"
CARGO_BIN="$CARGO_DIR/bin"
ORIG_PATH="$PATH"

installed=()
skipped=()

# ---- system packages ---------------------------------------------------------------------------
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  die "dpkg-query/apt-get not found: this script supports Debian and Ubuntu only"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == "install ok installed" ]]; then
    skipped+=("$pkg")
  else
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  if [[ "$(id -u)" -eq 0 ]]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
  elif command -v sudo >/dev/null 2>&1; then
    # sudo resets the environment, so pass DEBIAN_FRONTEND through env.
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
  else
    die "missing packages (${missing[*]}) and not root, and sudo is not available; run as root"
  fi
  log "installing packages: ${missing[*]}"
  "${as_root[@]}" apt-get update || die "apt-get update failed"
  "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
  installed+=("${missing[@]}")
fi

# ---- Rust --------------------------------------------------------------------------------------
# Prefer a rustup toolchain in ~/.cargo/bin even if it is not on PATH yet.
if [[ -x "$CARGO_BIN/cargo" && ":$PATH:" != *":$CARGO_BIN:"* ]]; then
  export PATH="$CARGO_BIN:$PATH"
fi

# Prints rustc's minor version (1.X), or nothing if rustc does not run.
rust_minor() { rustc --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9][0-9]*\)\..*/\1/p'; }

install_rustup() {
  log "$1: installing Rust with rustup (into $CARGO_BIN)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal -c rustfmt,clippy \
    || die "rustup installation failed"
  export PATH="$CARGO_BIN:$PATH"
  installed+=("rust (rustup, $(rustc --version))")
}

if ! command -v cargo >/dev/null 2>&1; then
  install_rustup "cargo not found"
else
  minor="$(rust_minor)"
  if [[ -z "$minor" || "$minor" -lt "$MIN_RUST_MINOR" ]]; then
    if command -v rustup >/dev/null 2>&1; then
      log "rustc is older than 1.$MIN_RUST_MINOR: updating the stable toolchain"
      rustup toolchain install stable --profile minimal -c rustfmt,clippy \
        || die "rustup toolchain install stable failed"
      rustup default stable || die "rustup default stable failed"
      installed+=("rust stable ($(rustc --version))")
    else
      install_rustup "rustc on PATH ($(command -v rustc || echo none)) is older than 1.$MIN_RUST_MINOR"
    fi
  else
    skipped+=("rust ($(rustc --version))")
  fi
fi

# rustfmt and clippy are needed by scripts/test.sh.
for component in rustfmt clippy; do
  subcommand="$component"
  if [[ "$component" == rustfmt ]]; then subcommand=fmt; fi
  if cargo "$subcommand" --version >/dev/null 2>&1; then
    skipped+=("$component")
  elif command -v rustup >/dev/null 2>&1; then
    log "adding Rust component $component"
    rustup component add "$component" || die "rustup component add $component failed"
    installed+=("$component")
  else
    log "warning: $component is missing and rustup is not available to add it (scripts/test.sh needs it)"
  fi
done

# ---- NVRTC + CUDA headers from PyPI (compile-checks kernels/*.cu without a GPU) --------------
# Only the tests need it (the kernel compile check): a machine whose pip cannot reach PyPI still
# builds and runs the demo; scripts/test.sh then fails that test, saying what is missing.
if bash "$(dirname "${BASH_SOURCE[0]}")/install-nvrtc.sh" >/dev/null; then
  skipped+=("nvrtc (.cache/nvrtc)")
else
  log "warning: installing NVRTC from PyPI failed (scripts/install-nvrtc.sh): the demo does not need it; the test suite's kernel compile check (tests/cuda_kernels.rs) will fail until it is installed"
fi

# ---- summary -----------------------------------------------------------------------------------
if ((${#installed[@]} > 0)); then
  log "installed: ${installed[*]}"
else
  log "installed: nothing"
fi
log "already present: ${skipped[*]}"
if ! env PATH="$ORIG_PATH" sh -c 'command -v cargo' >/dev/null 2>&1; then
  log "note: cargo is not on your PATH yet: run '. \"$CARGO_DIR/env\"' (or open a new shell)"
fi
