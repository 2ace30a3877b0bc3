#!/usr/bin/env bash
# Device call Q (issue 18): the launch bench after the hit path was inlined into one stretch of
# code (plan, launch and driver call: calls P's figures were no better than N's, and the plan's
# own launch, not the lookup, carried the overhead), with the new alternating measurement; then
# the breakdown, the preloaded server and the remaining GPU suites, each from an empty compute
# cache.
TOTAL_S=${TOTAL_S:-560}
source "$(dirname "$0")/gpu_lib.sh"
export JITUNE_LOAD_SECS=40
fresh; step launch_1 60 $G/benches/launch --bench
step launch_2 60 $G/benches/launch --bench
fresh; step tune_breakdown 80 $G/benches/tune_breakdown --bench
fresh; step server_preload 45 $G/examples/server --preload --threads 4 --seconds 20 --tune-s 4 --cache /tmp/pl.sqlite
for s in gpu_inherit gpu_cli gpu_faults gpu_tma gpu_sgemm cache_load_gpu; do
  fresh; step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
