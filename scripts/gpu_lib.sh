# Shared head of the device-call scripts (sourced, not run): the repository root, the jitune
# binary where the CLI tests look for it, $OUT, and `step NAME LIMIT CMD...`, which runs one step
# with its limit cut to what is left of TOTAL_S, keeps its log under $OUT and adds a row to the
# summary that `summary` prints at the end.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
root=$PWD
mkdir -p /work && { [ -e /work/main ] || ln -sfn "$root" /work/main; }
# The CLI tests run the `jitune` binary from where cargo built it (CARGO_BIN_EXE_jitune).
mkdir -p target/release && cp -f .gpu/jitune target/release/jitune 2>/dev/null
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export JITUNE_GPU_TESTS=1 RUST_BACKTRACE=1
TOTAL_S=${TOTAL_S:-560}
G=.gpu
start_all=$(date +%s)
left() { echo $((TOTAL_S - ($(date +%s) - start_all))); }
rows=()
step() { # NAME LIMIT CMD...
  local name=$1 limit=$2; shift 2
  local rest=$(( $(left) - 5 ))
  if [ "$rest" -lt 10 ]; then rows+=("$name: no time left"); return; fi
  [ "$limit" -le "$rest" ] || limit=$rest
  echo "=== $name (limit $limit s)"
  local t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$? t1=$(date +%s.%N)
  local wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  tail -n 12 "$OUT/$name.log"
  rows+=("$name: rc=$rc ${wall}s $(grep -hE '^test result' "$OUT/$name.log" | tail -1)")
}
# Issue 14's servers (calls G and I): `step NAME LIMIT bash -c "$(declare -f servers); ..."`.
servers() { # N CACHE: N servers at once on one cache file, Background mode, the issue's settings
  local n=$1 cache=$2 pids=() i
  for i in $(seq 1 "$n"); do
    $G/examples/server --threads 2 --seconds 40 --tune-s 6 --cache "$cache" >"$OUT/srv_$(basename "$cache" .sqlite)_$i.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}
# An empty compute cache for the next steps: NVRTC's CUBINs land in the driver's cache, and a
# config compiled before compiles again in ~20 ms instead of 0.25-2 s (calls K-M).
fresh() { export CUDA_CACHE_PATH=$(mktemp -d /tmp/cc.XXXXXX); }
summary() {
  echo; echo "== $(basename "$0"): $(( $(date +%s) - start_all )) s"
  printf '%s\n' "${rows[@]}" | tee "$OUT/summary.txt"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,uuid --format=csv,noheader | tee "$OUT/smi.txt"
