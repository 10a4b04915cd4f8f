#!/usr/bin/env bash
# Installs NVRTC (libnvrtc.so) and the CUDA headers NVRTC needs (cuda_bf16.h, and mma.h with
# its crt/ part for the tensor-core kernels, ...) from PyPI
# into <repo>/.cache/nvrtc, without a virtual environment and without a GPU, so that
# `cargo test --test cuda_kernels` can compile every kernels/*.cu on any machine.
#
# Idempotent: does nothing when both are already there. Needs python3 with pip
# (Debian: `apt-get install python3-pip`). Prints the two lines
#   NVRTC_LIB_DIR=<dir>        -> put on LD_LIBRARY_PATH
#   CUDA_INCLUDE_DIR=<dir>     -> export as FERROTRON_CUDA_INCLUDE
# and, with --env, prints them as `export` lines instead: eval "$(scripts/install-nvrtc.sh --env)".
set -euo pipefail

die() { echo "install-nvrtc: $*" >&2; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/.cache/nvrtc"
want_env=0
[[ "${1:-}" == "--env" ]] && want_env=1

find_lib_dir() {
  local f
  f="$(find "$dest" -name 'libnvrtc.so*' ! -name '*builtins*' 2>/dev/null | sort | head -n1)"
  [[ -n "$f" ]] && dirname "$f"
}
find_inc_dir() {
  local f
  f="$(find "$dest" -name cuda_bf16.h -path '*/include/*' 2>/dev/null | sort | head -n1)"
  # mma.h includes crt/mma.h, which comes in its own wheel (nvidia-cuda-crt).
  [[ -n "$f" && -f "$(dirname "$f")/crt/mma.h" ]] && dirname "$f"
}

lib_dir="$(find_lib_dir || true)"
inc_dir="$(find_inc_dir || true)"
if [[ -z "$lib_dir" || -z "$inc_dir" ]]; then
  command -v python3 >/dev/null 2>&1 || die "python3 not found (Debian: apt-get install python3 python3-pip)"
  python3 -m pip --version >/dev/null 2>&1 || die "pip not found (Debian: apt-get install python3-pip)"
  mkdir -p "$dest"
  # Keep the download out of git without touching the repository's .gitignore.
  [[ -f "$repo/.cache/.gitignore" ]] || echo '*' > "$repo/.cache/.gitignore"
  pkgs=("nvidia-cuda-nvrtc==13.*" "nvidia-cuda-runtime==13.*" "nvidia-cuda-crt==13.*")
  args=(install --quiet --disable-pip-version-check --no-deps --upgrade --target "$dest" "${pkgs[@]}")
  # pip does not apply PEP 668's externally-managed check to --target installs; older pips on
  # Debian may still refuse, so retry with --break-system-packages (still only into --target).
  if ! out="$(python3 -m pip "${args[@]}" 2>&1)"; then
    if grep -q "externally-managed" <<<"$out"; then
      python3 -m pip "${args[@]}" --break-system-packages || die "pip install failed"
    else
      echo "$out" >&2
      die "pip install of ${pkgs[*]} failed"
    fi
  fi
  lib_dir="$(find_lib_dir || true)"
  inc_dir="$(find_inc_dir || true)"
  [[ -n "$lib_dir" ]] || die "libnvrtc.so not found under $dest after install"
  [[ -n "$inc_dir" ]] || die "cuda_bf16.h with crt/mma.h not found under $dest after install"
fi

# cudarc looks for libnvrtc.so / libnvrtc.so.12 / ..., not the wheel's libnvrtc.so.13:
# provide the unversioned name.
if [[ ! -e "$lib_dir/libnvrtc.so" ]]; then
  versioned="$(cd "$lib_dir" && ls libnvrtc.so.* 2>/dev/null | grep -v builtins | sort | head -n1)"
  [[ -n "$versioned" ]] || die "no libnvrtc.so.* in $lib_dir"
  ln -s "$versioned" "$lib_dir/libnvrtc.so"
fi

if [[ $want_env == 1 ]]; then
  echo "export LD_LIBRARY_PATH=\"$lib_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
  echo "export FERROTRON_CUDA_INCLUDE=\"$inc_dir\""
else
  echo "NVRTC_LIB_DIR=$lib_dir"
  echo "CUDA_INCLUDE_DIR=$inc_dir"
fi
