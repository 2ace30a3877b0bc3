#!/usr/bin/env bash
# The GPU measurements of issue 17 (jitune embedded in a server: graph-safe launches, swap
# control, events) in one device command of at most 8 minutes, on staged binaries:
#
#   STAGE_ONLY=gpu_graph,graph_server,server,launch ../shared/gpu/stage    # here, builds into .gpu/
#   device run, carry [".gpu"]:  scripts/gpu_embed.sh
#
# 1. tests/gpu_graph.rs: views and raw pointers, hits and cold keys inside captures, refusal
#    without breaking the capture, OnRequest swaps and event order, in-process tuning paused
#    while another thread captures, cudarc's event tracking inside a capture (~2-3 min);
# 2. examples/graph_server: a 21-launch decode step captured with cold keys, 1000 replays,
#    background tuning, apply_swaps, re-capture, 1000 replays; then 60 s of in-process tuning
#    beside captures and replays on another thread (~2.5 min);
# 3. examples/graph_server --capture-guard auto for 20 s (captures noticed on launches only;
#    informative);
# 4. examples/server for 30 s: the stats and the event summary of a serving run;
# 5. benches/launch: the hit path's cost and allocations (the hit counter is on it now).
#
# Logs go to $OUT (or ./gpu_embed_logs); the short table is printed last. GPU_DIR names another
# staging folder; CONCURRENT_S changes the 60 s. Exit status 1 if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
G=${GPU_DIR:-.gpu}
OUT=${OUT:-$PWD/gpu_embed_logs}
mkdir -p "$OUT"
export JITUNE_GPU_TESTS=1 RUST_BACKTRACE=1
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"

part() { # NAME LIMIT_S COMMAND...: runs with a time limit, logs to $OUT/NAME.log, records rc
  local name=$1 limit=$2; shift 2
  echo "=== $name: $* (limit ${limit} s)"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" >>"$OUT/rc.txt"
  tail -n 40 "$OUT/$name.log"
}

part gpu_graph 150 "$G/tests/gpu_graph" --test-threads=1 --nocapture
part graph_server 180 "$G/examples/graph_server" --replays 1000 --tune-s 4 --max-evals 40 \
  --wait-s 90 --concurrent-s "${CONCURRENT_S:-60}"
part graph_auto 55 "$G/examples/graph_server" --replays 200 --tune-s 2 --max-evals 12 \
  --wait-s 15 --concurrent-s 20 --capture-guard auto
part server 55 "$G/examples/server" --threads 2 --seconds 30 --tune-s 3 --pause-ms 20
part launch_bench 40 "$G/benches/launch" --bench

{
  echo
  echo "== issue 17 on $(cut -d, -f1 "$OUT/gpu.txt"), $(( $(date +%s) - start )) s"
  while read -r name rc secs; do printf '%-14s %-8s %s\n' "$name" "$rc" "$secs"; done <"$OUT/rc.txt"
  echo "gpu_graph:     $(grep -h '^test result' "$OUT/gpu_graph.log" | tail -1)"
  grep -h '^event tracking' "$OUT/gpu_graph.log" | sed 's/^/  /'
  g=$OUT/graph_server.log
  echo "graph step:    $(grep -h '^captured' "$g" | head -1)"
  echo "               before $(grep -h 'before (cold keys borrowed)' "$g" | awk '{print $(NF-2)}') us, after $(grep -h 'after apply_swaps' "$g" | awk '{print $(NF-2)}') us median; $(grep -h 'speed-up' "$g" | head -1 | xargs)"
  echo "               $(grep -h '^replayed' "$g" | tr '\n' ';')"
  echo "concurrent:    $(grep -h '^concurrent: [0-9]* captures' "$g" | head -1 | cut -d: -f2-)"
  echo "               $(grep -h 'in-process tuning meanwhile' "$g" | head -1 | xargs)"
  echo "auto-detected: $(grep -h '^concurrent: [0-9]* captures' "$OUT/graph_auto.log" | head -1 | cut -d: -f2-)"
  echo "               $(grep -h 'in-process tuning meanwhile' "$OUT/graph_auto.log" | head -1 | xargs)"
  echo "server stats:  $(grep -h -A1 '^stats:' "$OUT/server.log" | tr -s ' ' | tr '\n' ' ')"
  echo "server events: $(grep -h '^events:' "$OUT/server.log" | head -1)"
  echo "launch bench:  $(grep -h -i 'ns/launch\|alloc' "$OUT/launch_bench.log" | tr -s ' ' | tr '\n' ';')"
} | tee "$OUT/summary.txt"
! grep -qv ' rc=0 ' "$OUT/rc.txt"
