#!/usr/bin/env bash
# Device call Q (issue 18): the remaining GPU suites after call P's change, the breakdown and
# the preloaded server, each from an empty compute cache.
TOTAL_S=${TOTAL_S:-560}
source "$(dirname "$0")/gpu_lib.sh"
export JITUNE_LOAD_SECS=40
fresh; step tune_breakdown 80 $G/benches/tune_breakdown --bench
fresh; step server_preload 45 $G/examples/server --preload --threads 4 --seconds 20 --tune-s 4 --cache /tmp/pl.sqlite
for s in gpu_inherit gpu_cli gpu_faults gpu_tma gpu_sgemm cache_load_gpu; do
  fresh; step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
fresh; step gpu_hgemm 280 $G/tests/gpu_hgemm --test-threads=1 --nocapture
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
