#!/usr/bin/env bash
# Device call B of the closing runs (issues 14, 15, 18, 17, 13): four servers on one cache file,
# two servers with separate files sharing one Redis, the server with preloading, the launch and
# tuning-breakdown benches, the graph server, the remaining suites, LFBO against exhaustive.
# Every step's limit is cut to what is left of TOTAL_S (default 500).
# Stage first (here): ../shared/gpu/stage; cp target/release/jitune .gpu/; redis-server and
# the libraries it needs into .gpu/redis/.
TOTAL_S=${TOTAL_S:-500}
source "$(dirname "$0")/gpu_lib.sh"
export JITUNE_LOAD_SECS=30
servers() { # N CACHE-PREFIX [env...]: N servers at once, 30 s, Background mode
  local n=$1 prefix=$2; shift 2
  local pids=() i
  for i in $(seq 1 "$n"); do
    local cache=$prefix; [ "$prefix" = "split" ] && cache=/tmp/split$i.sqlite
    env "$@" $G/examples/server --threads 2 --seconds 30 --tune-s 5 --cache "$cache" >"$OUT/srv_${prefix##*/}_$i.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for i in $(seq 1 "$n"); do echo "server $i: $(grep -h -A1 '^stats:' "$OUT/srv_${prefix##*/}_$i.log" | tr -s ' ' | tr '\n' ' ')"; done
}
# Issue 14: four servers, one cache file, one GPU.
rm -f /tmp/four.sqlite*
step four_servers 75 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 4 /tmp/four.sqlite"
$G/jitune ls --cache /tmp/four.sqlite > "$OUT/four_ls.txt" 2>&1
# Issue 15: two servers, separate files, one Redis on loopback.
export LD_LIBRARY_PATH=$root/$G/redis:${LD_LIBRARY_PATH:-}
$G/redis/redis-server --port 16399 --bind 127.0.0.1 --save '' --appendonly no --dir /tmp \
  --daemonize yes --logfile /tmp/redis.log && sleep 0.5
rm -f /tmp/split*.sqlite*
step two_servers_redis 75 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 2 split JITUNE_REMOTE=redis://127.0.0.1:16399/0"
$G/jitune ls --remote redis://127.0.0.1:16399/0 > "$OUT/redis_ls.txt" 2>&1
# Issue 18: first-pass latency with preloading; launch overhead; per-candidate breakdown.
step server_preload 60 $G/examples/server --preload --threads 4 --seconds 30 --tune-s 4
step launch 60 $G/benches/launch --bench
# Issue 13: the remaining suites; then the breakdown, the graph server.
for s in gpu_tma gpu_sgemm gpu_kernels gpu_cli cache_load_gpu; do
  step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
step tune_breakdown 120 $G/benches/tune_breakdown --bench
step gpu_hgemm 150 $G/tests/gpu_hgemm --test-threads=1 --nocapture
step graph_server 130 $G/examples/graph_server --replays 1000 --tune-s 3 --max-evals 24 --wait-s 60 --concurrent-s 30
# Issue 18: LFBO against exhaustive on SGEMM 4096^3 with what is left.
ex=$(( $(left) - 80 )); [ "$ex" -ge 30 ] || ex=30
step tune_sgemm $((ex + 75)) $G/benches/tune_sgemm --bench --exhaustive-limit-s "$ex"
summary
grep -h "^server" "$OUT/four_servers.log" "$OUT/two_servers_redis.log" 2>/dev/null
