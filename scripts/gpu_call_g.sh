#!/usr/bin/env bash
# Device call G (session of 2026-12-02, second stop): the launch bench's queued mode and the
# honest compile bench (issue 18, never run on a GPU); four servers on one cache file and one
# server alone, both caches brought back for `verify --against` (issue 14's side-by-side
# re-timing, next call); every GPU suite again after the changes made since call C.
# Stage first (here): STAGE_ONLY=... ../shared/gpu/stage; cp target/release/jitune .gpu/
TOTAL_S=${TOTAL_S:-540}
source "$(dirname "$0")/gpu_lib.sh"
export JITUNE_LOAD_SECS=40
step launch 60 $G/benches/launch --bench
step compile 90 $G/benches/compile --bench
rm -f /tmp/four.sqlite* /tmp/single.sqlite*
step four_servers 60 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 4 /tmp/four.sqlite"
step single_server 60 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 1 /tmp/single.sqlite"
$G/jitune ls --cache /tmp/four.sqlite > "$OUT/four_ls.txt" 2>&1
$G/jitune ls --cache /tmp/single.sqlite > "$OUT/single_ls.txt" 2>&1
(cd /tmp && tar czf "$OUT/caches.tgz" four.sqlite* single.sqlite*)
for s in gpu_engine gpu_single_flight gpu_inherit gpu_speed gpu_faults gpu_tma gpu_kernels \
         gpu_cli cache_load_gpu gpu_graph gpu_sgemm; do
  step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
step graph_server 70 $G/examples/graph_server --replays 1000 --tune-s 3 --max-evals 24 --wait-s 40 --concurrent-s 20
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
