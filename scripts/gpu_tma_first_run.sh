#!/bin/bash
# (Kept in the branch: the staged copy under target/ is not tracked. Rebuild the binaries with
# `cargo test --release --no-run --test gpu_tma --test gpu_engine --test gpu_hgemm` + `cargo build --release --bin jitune`
# and lay them out as .gpu-tma/bin/{gpu_tma,gpu_engine,gpu_hgemm,jitune} and .gpu-tma/kernels/.)
# First device call of the `tma` branch (commits 1aeeca7..HEAD). Stage on the dev machine first:
#   mkdir -p /work/main/.gpu-tma && cp -r /work/wt-tma/target/gpu-tma/. /work/main/.gpu-tma/ \
#     && grep -qx '/.gpu-tma/' /work/main/.git/info/exclude || echo /.gpu-tma/ >> /work/main/.git/info/exclude
# then: run(command="bash .gpu-tma/run.sh", carry=[".gpu-tma"], timeout_s=600)
# The binaries were built in /work/wt-tma, so they read kernels from /work/wt-tma/kernels
# (CARGO_MANIFEST_DIR): that path is linked to the staged copy of the branch's kernels/.
cd "$(dirname "$0")/.." || exit 1
T=$PWD/.gpu-tma
mkdir -p /work/wt-tma && ln -sfn "$T/kernels" /work/wt-tma/kernels
export JITUNE_GPU_TESTS=1 JITUNE_WORKER_CMD=$T/bin/jitune RUST_BACKTRACE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/smi.txt"
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el "1. encoding + launch path (echo kernel, zero map at K=4100, no allocation on the hit path)"
timeout 90 $T/bin/gpu_tma gpu_tensor_map --nocapture --test-threads=1 > "$OUT/tma_unit.log" 2>&1; echo "rc $?"
grep -E "^test |panicked|assert|test result" "$OUT/tma_unit.log" | head -20
el "2. TMA GEMM: default vs CPU at 512^3, 257x129x200 (fallback), 1x4096x4096, 4096^3; 20 configs/shape vs default"
timeout 330 $T/bin/gpu_tma gpu_hgemm_sm90_tma_matches_cpu --nocapture --test-threads=1 > "$OUT/tma_gemm.log" 2>&1; echo "rc $?"
grep -E "relative error|configs,|launch failure|TFLOP|panicked|test result" "$OUT/tma_gemm.log" | head -80
el "3. regressions of the launch path for specs without maps"
timeout 150 $T/bin/gpu_engine --test-threads=1 > "$OUT/engine.log" 2>&1; echo "gpu_engine rc $?"
grep -E "panicked|test result" "$OUT/engine.log" | tail -5
el done
