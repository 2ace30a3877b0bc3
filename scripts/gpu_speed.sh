#!/usr/bin/env bash
# Every measurement of issue 18 (tuning in seconds), in order, on the GPU machine, in about
# 7 minutes; a table of results against the issue's targets comes last. Logs go to $OUT (or
# ./gpu_speed_logs when $OUT is not set).
#
# Here (no GPU needed), stage the binaries:
#     STAGE_ONLY=gpu_speed,compile,launch,tune_breakdown,tune_sgemm,quickstart,server \
#         ../shared/gpu/stage
# Then one device call with carry [".gpu"]:
#     bash scripts/gpu_speed.sh
#
# Knobs (environment): TOTAL_S (default 540: every step's limit is cut to what is left of it, so
# the script ends in time for a 600-s device command), SGEMM_LIMIT_S (default 200: the
# exhaustive SGEMM arm's time limit, also cut to what is left; when it is hit, the table says so
# and the step can be rerun alone with a larger limit, e.g.
# `.gpu/benches/tune_sgemm --exhaustive-limit-s 540`), SKIP (comma-separated step names).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu_speed_logs}
mkdir -p "$OUT"
export JITUNE_GPU_TESTS=1 RUST_BACKTRACE=1
SGEMM_LIMIT_S=${SGEMM_LIMIT_S:-200}
TOTAL_S=${TOTAL_S:-540}
SKIP=${SKIP:-}
G=.gpu
failed=()
start_all=$(date +%s)

# Seconds left of TOTAL_S.
left() { echo $((TOTAL_S - ($(date +%s) - start_all))); }

# step NAME TIMEOUT_S COMMAND...: runs one step, its output in $OUT/NAME.log, its wall time and
# exit code in $OUT/NAME.time; the limit is cut to what is left of TOTAL_S.
step() {
  local name=$1 limit=$2
  shift 2
  if [[ ",$SKIP," == *",$name,"* ]]; then
    echo "=== $name: skipped"
    return
  fi
  local rest
  rest=$(( $(left) - 5 ))
  if [ "$rest" -lt 15 ]; then
    echo "=== $name: no time left of TOTAL_S=$TOTAL_S"
    failed+=("$name(no time)")
    return
  fi
  [ "$limit" -le "$rest" ] || limit=$rest
  echo "=== $name (limit ${limit} s): $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "$wall $rc" >"$OUT/$name.time"
  tail -n 25 "$OUT/$name.log"
  echo "--- $name: exit $rc in $wall s"
  [ "$rc" -eq 0 ] || failed+=("$name(rc=$rc)")
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader \
  >"$OUT/device.txt" 2>&1 || true
cat "$OUT/device.txt"

# 1. Correctness gate on the device, transpose 8192^2 vs exhaustive, roofline stop, preload,
#    racing (tests/gpu_speed.rs), one test at a time so timings are not shared.
step gpu_speed 240 "$G/tests/gpu_speed" --nocapture --test-threads=1
# 2. Compile pool against serial-with-a-context and threads.
step compile 120 "$G/benches/compile" --bench
# 3. Launch hit overhead against a raw cuLaunchKernel and cudarc's builder.
step launch 90 "$G/benches/launch" --bench
# 4. Per-candidate breakdown of tuning runs (transpose 8192^2, sgemm 2048^3, softmax 8192^2).
step tune_breakdown 150 "$G/benches/tune_breakdown" --bench
# 5. Quickstart, first run (fresh cache) and second run (all from the cache).
QS_CACHE=$(mktemp -d)/cache.sqlite
step quickstart_first 200 env JITUNE_CACHE="$QS_CACHE" "$G/examples/quickstart"
step quickstart_second 60 env JITUNE_CACHE="$QS_CACHE" "$G/examples/quickstart"
# 6. Server with kernels preloaded: first-pass launch latency.
step server_preload 120 "$G/examples/server" --preload --threads 4 --seconds 40 --tune-s 4
# 7. LFBO (100 evaluations) against exhaustive on the shipped SGEMM space at 4096^3: the
#    exhaustive arm gets what is left after about a minute for LFBO and the re-timing.
ex_limit=$(( $(left) - 75 ))
[ "$ex_limit" -le "$SGEMM_LIMIT_S" ] || ex_limit=$SGEMM_LIMIT_S
[ "$ex_limit" -ge 30 ] || ex_limit=30
step tune_sgemm $((ex_limit + 70)) "$G/benches/tune_sgemm" --bench --exhaustive-limit-s "$ex_limit"

# ---------------------------------------------------------------------------------------------
# The table. Each value is read from its step's log; "?" where the step did not print it.
first() { # first(FILE, ERE with one group): the group of the first matching line
  [ -f "$OUT/$1" ] || { echo "?"; return; }
  local v
  v=$(grep -m1 -E "$2" "$OUT/$1" | sed -E "s/.*$2.*/\\1/")
  echo "${v:-?}"
}
wall() { [ -f "$OUT/$1.time" ] && cut -d' ' -f1 "$OUT/$1.time" || echo "?"; }
rc() { [ -f "$OUT/$1.time" ] && cut -d' ' -f2 "$OUT/$1.time" || echo "?"; }
row() { printf '| %-52s | %-34s | %-22s |\n' "$1" "$2" "$3"; }

{
  echo
  echo "## issue 18 on $(head -n1 "$OUT/device.txt" 2>/dev/null) ($(date -u +%F), $(( $(date +%s) - start_all )) s)"
  echo
  row "measurement" "result" "target"
  row "---" "---" "---"
  row "gpu_speed tests (device gate, transpose, roofline, preload)" "exit $(rc gpu_speed)" "0"
  row "transpose 8192x8192, 40 configs: tuning wall" "$(first gpu_speed.log 'lfbo: [0-9]+ configs in ([0-9.]+ s)')" "<= 3 s"
  row "transpose: LFBO winner vs exhaustive (re-timed)" "$(first gpu_speed.log 're-timed: lfbo winner .*\(([-+0-9.]+%)\)')" "same winner, <= +3%"
  row "transpose: check per candidate (median)" "$(first gpu_speed.log 'check median ([0-9.]+ ms)')" "was ~700 ms"
  for c in transpose sgemm softmax; do
    v=$(grep -A1 -m1 -E "^$c " "$OUT/tune_breakdown.log" 2>/dev/null | grep -oE '=> overhead [0-9.]+ ms' | sed 's/=> overhead //')
    row "overhead per candidate beyond the kernel, $c (median)" "${v:-?}" "<= 5 ms"
  done
  row "softmax 8192^2 roofline stop at 95%" "$(first gpu_speed.log 'at 95%: (stopped [a-z]+ after [0-9]+ configs)')" "stops near the roofline"
  row "compile pool warm vs serial with a context" "$(first compile.log 'workers \(warm\).*speed-up ([0-9.]+x vs serial, [0-9.]+x vs threads)')" "honest ratios"
  row "launch hit overhead vs raw cuLaunchKernel" "$(first launch.log 'hit overhead vs raw +([-0-9.]+ ns)')" "<= 100 ns"
  row "launch hit overhead vs cudarc builder" "$(first launch.log 'hit overhead vs builder +([-0-9.]+ ns)')" "(was 283 ns)"
  row "quickstart first run (fresh cache)" "$(wall quickstart_first) s, exit $(rc quickstart_first)" "<= 45 s (was 105.6 s)"
  row "quickstart second run (from the cache)" "$(wall quickstart_second) s, exit $(rc quickstart_second)" "(was 3.3 s)"
  row "server --preload: first-pass launch p99" "$(first server_preload.log 'first pass .* p99 +([0-9.]+ us)')" "<= 20 ms (was 820 ms)"
  row "server --preload: preload" "$(first server_preload.log '(preloaded [0-9]+ images .* s)')" ""
  row "sgemm 4096^3: LFBO vs optimum (re-timed)" "$(first tune_sgemm.log 'within ([-+0-9.]+%) of the optimum')" "<= 3%"
  row "sgemm 4096^3: LFBO wall / exhaustive wall" "$(first tune_sgemm.log 'wall time +lfbo [0-9.]+ s = ([0-9.]+% of exhaustive [0-9.]+ s[^(]*)')" "<= 10%"
  row "sgemm 4096^3: exhaustive complete?" "$(grep -q STOPPED "$OUT/tune_sgemm.log" 2>/dev/null && echo "no, stopped at its ${ex_limit} s limit" || echo yes)" "yes"
  echo
  if [ ${#failed[@]} -gt 0 ]; then echo "steps that failed: ${failed[*]}"; else echo "every step exited 0"; fi
} | tee "$OUT/table.md"
[ ${#failed[@]} -eq 0 ]
