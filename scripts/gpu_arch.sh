#!/usr/bin/env bash
# Issue 13 on the GPU machine: every GPU test suite after the architecture change, the launch-hit
# bench, and the quickstart twice against one cache file (first run tunes, second only loads).
# Stage first (here): STAGE_ONLY=gpu_,cache_load_gpu,quickstart,launch ../shared/gpu/stage
# Then on the device: bash scripts/gpu_arch.sh   (carry [".gpu"]; about 8 minutes)
cd "$(dirname "$0")/.." || exit 1
root=$PWD
# The binaries were built in /work/main and read kernels/ and tests/data/ from there.
mkdir -p /work && { [ -e /work/main ] || ln -sfn "$root" /work/main; }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export JITUNE_GPU_TESTS=1 RUST_BACKTRACE=1 JITUNE_LOAD_SECS=${JITUNE_LOAD_SECS:-40}
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/smi.txt"
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
summary=()
suite() { # name, limit in s
  local name=$1 limit=$2 log="$OUT/$1.log"
  [ -x ".gpu/tests/$name" ] || { summary+=("$name: not staged"); return; }
  el "suite $name"
  timeout "$limit" ".gpu/tests/$name" --test-threads=1 --nocapture > "$log" 2>&1
  local rc=$?
  local res; res=$(grep -E "^test result|cache load|faults:" "$log" | tail -2 | tr '\n' ' ')
  summary+=("$name rc=$rc $res")
}
for s in gpu_engine gpu_single_flight gpu_tma gpu_sgemm gpu_kernels gpu_cli; do suite "$s" 120; done
suite gpu_faults 150
suite gpu_hgemm 180
suite cache_load_gpu 90
if [ -x .gpu/benches/launch ]; then
  el "launch bench"
  timeout 60 .gpu/benches/launch --bench > "$OUT/launch.log" 2>&1
  summary+=("launch: $(grep -iE "overhead|ns" "$OUT/launch.log" | tail -3 | tr '\n' ' ')")
fi
if [ -x .gpu/examples/quickstart ]; then
  export JITUNE_CACHE=/tmp/qs-cache.sqlite; rm -f /tmp/qs-cache.sqlite*
  for run in 1 2; do
    el "quickstart run $run"
    s=$(date +%s.%N)
    timeout 240 .gpu/examples/quickstart > "$OUT/quickstart$run.log" 2>&1
    rc=$?; e=$(date +%s.%N)
    summary+=("quickstart run $run rc=$rc wall $(awk "BEGIN{printf \"%.1f\", $e - $s}") s")
  done
  unset JITUNE_CACHE
fi
el done
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
