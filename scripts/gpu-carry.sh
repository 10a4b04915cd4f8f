#!/usr/bin/env bash
# Assembles .carry/ (ignored by git) for the GPU machine lent by the `device` tool, which has
# no Rust toolchain, no OpenMPI and no package registry: the stripped release binary, the
# GPU test binaries (cuda_kernels, cuda_gemm, cuda_model, cuda_parallel), a relocatable OpenMPI (orterun, orted, MCA components, help
# files; found through OPAL_PREFIX), every shared library these need beyond glibc, the
# fortunes text the tests tokenise, and gpu_env.sh, which sets the paths there:
#
#   bash scripts/gpu-carry.sh
#   device: run(carry=[".carry"], timeout_s=600, command="bash scripts/gpu-session.sh 540")
#
# (scripts/gpu-session.sh runs the GPU tests, then the benchmark, inside a time budget;
# `source .carry/gpu_env.sh && .carry/run_gpu_tests.sh` runs just the tests.)
#
# Checked in a minimal Debian chroot without OpenMPI (see the closing notes of the CUDA work).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
C=.carry
OMPI_SRC=/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3

TESTS="cuda_kernels cuda_gemm cuda_model cuda_parallel"
cargo build --release
json="$(cargo test --release --no-run --message-format=json $(printf -- '--test %s ' $TESTS) 2>/dev/null)"

rm -rf "$C"
mkdir -p "$C/lib" "$C/ompi/bin" "$C/ompi/lib/x86_64-linux-gnu/openmpi/lib" "$C/ompi/share"
cp target/release/ferrotron "$C/ferrotron"
for t in $TESTS; do
  bin="$(grep -o "\"executable\":\"[^\"]*/$t-[^\"]*\"" <<<"$json" | tail -1 | cut -d'"' -f4)"
  [[ -x "$bin" ]] || { echo "gpu-carry: cannot find the $t test binary" >&2; exit 1; }
  cp "$bin" "$C/$t"
  strip "$C/$t"
done
strip "$C/ferrotron"
cp /usr/bin/orterun /usr/bin/orted "$C/ompi/bin/"
ln -s orterun "$C/ompi/bin/mpirun"
# MCA components, without the network fabrics this single node does not have (their
# libraries — UCX, libfabric, verbs, PSM — would not fit and are not needed).
mkdir -p "$C/ompi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3"
for f in "$OMPI_SRC"/*.so; do
  case "$(basename "$f")" in
    *ucx*|*ofi*|*openib*|*verbs*|*psm*|*usnic*|*uct*|*portals*|*java*) continue ;;
  esac
  cp "$f" "$C/ompi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/"
done
cp -r /usr/share/openmpi "$C/ompi/share/"
# Shared libraries beyond glibc for everything carried.
for f in "$C/ferrotron" "$C"/cuda_* "$C"/ompi/bin/orte* "$C"/ompi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so; do
  ldd "$f" 2>/dev/null | awk '$3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libgcc_s.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libstdc++.so.*|libresolv.so.*|libnsl.so.*|libutil.so.*|libanl.so.*) ;;
    *) cp -L "$lib" "$C/lib/" ;;
  esac
done
mkdir -p "$C/fortunes"
for f in fortunes literature riddles science wisdom; do cp /usr/share/games/fortunes/$f "$C/fortunes/"; done
# Token shards of the whole corpus for benchmarks/gpu_gpt2/run_device.sh.
"$C/ferrotron" prepare-data --input /usr/share/games/fortunes --out "$C/data/fortunes" >/dev/null
cat > "$C/gpu_env.sh" <<'ENV'
# Source on the GPU machine from the repository root: paths for the carried binaries.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
mkdir -p /tmp/nvlib
for f in $NV/*/lib/lib*.so.*; do b=$(basename $f); ln -sf $f /tmp/nvlib/${b%%.so.*}.so; done
export OPAL_PREFIX=$PWD/.carry/ompi
export PATH=$OPAL_PREFIX/bin:$PATH
export LD_LIBRARY_PATH=$PWD/.carry/lib:/tmp/nvlib:$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')
# The headers of torch's NVRTC first; crt/mma.h (the tensor-core kernels' WMMA) from wherever it is.
inc=; mma=
for d in $NV/cu13/include $NV/cuda_runtime/include /usr/local/cuda/include; do [ -z "$inc" ] && [ -f $d/cuda_bf16.h ] && inc=$d; [ -z "$mma" ] && [ -f $d/crt/mma.h ] && mma=$d; done
export FERROTRON_CUDA_INCLUDE=$inc${mma:+:$mma}
[ "$PWD" = /work/main ] || { mkdir -p /work && ln -sfn $PWD /work/main; }
mkdir -p target/release && ln -sf $PWD/.carry/ferrotron target/release/ferrotron
export FERROTRON_TEST_FORTUNES=$PWD/.carry/fortunes
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mca_base_component_show_load_errors=0
# Single node: no ssh needed (OpenMPI insists on finding an rsh agent otherwise).
export OMPI_MCA_plm_rsh_agent=false
ENV
cat > "$C/run_gpu_tests.sh" <<RUN
#!/usr/bin/env bash
# Runs every GPU test binary; prints one summary line per binary; exit status non-zero if any failed.
rc=0
for t in $TESTS; do
  echo "=== \$t"
  .carry/\$t --nocapture --test-threads=1 || rc=1
done
exit \$rc
RUN
chmod +x "$C/run_gpu_tests.sh"
du -sh "$C"
