#!/usr/bin/env bash
# Device call J (closing): the quickstart's first and second runs after the pool keeps its
# workers and the comparison kernels compile ahead (issue 18), the tuning breakdown, the launch
# bench, then every GPU suite again after this stop's changes (batches sized to the pool,
# prefetching, parallel input generation, the leaner hit path, the pool's counters).
TOTAL_S=${TOTAL_S:-430}
source "$(dirname "$0")/gpu_lib.sh"
# cache_load_gpu runs 120 s by default, its whole step limit: call J ran it so and it timed out.
export JITUNE_LOAD_SECS=40
rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 90 $G/examples/quickstart
step quickstart_second 60 $G/examples/quickstart
unset JITUNE_CACHE
step tune_breakdown 90 $G/benches/tune_breakdown --bench
step launch 60 $G/benches/launch --bench
for s in gpu_engine gpu_single_flight gpu_inherit gpu_cli gpu_faults gpu_tma gpu_kernels \
         gpu_graph gpu_speed gpu_sgemm cache_load_gpu gpu_hgemm; do
  step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
