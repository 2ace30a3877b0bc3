#!/usr/bin/env bash
# Device call A of the closing runs (issues 13, 14, 16, 17, 18): the core GPU suites, the
# quickstart twice, four concurrent `jitune tune` on one fresh cache, the #16 inheritance test,
# the #18 and #17 suites, isolation faults. Every step's limit is cut to what is left of
# TOTAL_S (default 560) so the call ends with its table inside a 600-s command.
# Stage first (here): ../shared/gpu/stage, then cp target/release/jitune .gpu/
TOTAL_S=${TOTAL_S:-560}
source "$(dirname "$0")/gpu_lib.sh"
step gpu_engine 100 $G/tests/gpu_engine --test-threads=1 --nocapture
step gpu_single_flight 60 $G/tests/gpu_single_flight --test-threads=1 --nocapture
step quickstart_first 150 env JITUNE_CACHE=/tmp/qs.sqlite $G/examples/quickstart
step quickstart_second 40 env JITUNE_CACHE=/tmp/qs.sqlite $G/examples/quickstart
# Four `jitune tune` started at once against one fresh cache (issue 14).
cat > /tmp/shapes.toml <<'S'
transpose = [[8192, 8192], [4096, 1024]]
S
rm -f /tmp/one.sqlite*
concurrent() {
  local pids=() i
  for i in 1 2 3 4; do
    JITUNE_WORKER_CMD=$root/$G/jitune $G/jitune tune tests/data/transpose.toml --shapes /tmp/shapes.toml \
      --cache /tmp/one.sqlite --json >"$OUT/tune$i.json" 2>"$OUT/tune$i.err" & pids+=($!)
  done
  local rc=0; for i in "${!pids[@]}"; do wait "${pids[$i]}"; echo "jitune tune $((i+1)): exit $?"; done
  $G/jitune ls --cache /tmp/one.sqlite
}
step concurrent_tune 120 bash -c "$(declare -f concurrent); root=$root G=$G OUT=$OUT concurrent"
step gpu_inherit 100 $G/tests/gpu_inherit --test-threads=1 --nocapture
step gpu_speed 200 $G/tests/gpu_speed --test-threads=1 --nocapture
step gpu_graph 150 $G/tests/gpu_graph --test-threads=1 --nocapture
step gpu_faults 120 $G/tests/gpu_faults
summary
grep -h "exit" "$OUT/concurrent_tune.log" | head -4
