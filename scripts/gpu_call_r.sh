#!/usr/bin/env bash
# Device call R (issue 18): the launch bench after the hit path lost its last out-of-line calls
# (launch memo, marshalling, bcmp, the counter stripe's thread-local), twice on whatever core
# the scheduler picks and twice pinned to one core (taskset; both sides of every comparison run
# in the same pinned process); the suites that launch through the changed path (graph
# captures, engine, inheritance with its new tolerance) and gpu_hgemm, each from an empty
# compute cache.
TOTAL_S=${TOTAL_S:-560}
source "$(dirname "$0")/gpu_lib.sh"
fresh; step launch_1 60 $G/benches/launch --bench
step launch_2 60 $G/benches/launch --bench
pin="taskset -c 3"; command -v taskset >/dev/null || pin=""
step launch_pinned_1 60 $pin $G/benches/launch --bench
step launch_pinned_2 60 $pin $G/benches/launch --bench
for s in gpu_inherit gpu_graph gpu_engine; do
  fresh; step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
fresh; step gpu_hgemm 280 $G/tests/gpu_hgemm --test-threads=1 --nocapture
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
