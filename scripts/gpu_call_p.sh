#!/usr/bin/env bash
# Device call P (issue 18): the hit path through a thread's recent hits (no key-map lookup on a
# repeated launch), the quickstart with SGEMM 4096^3 tuned before 1024^3, and the suites that
# launch (engine, graph captures, speed, single flight, kernels), plus the breakdown. Every step
# starts from an empty compute cache (see call M).
TOTAL_S=${TOTAL_S:-560}
source "$(dirname "$0")/gpu_lib.sh"
fresh; step launch_1 60 $G/benches/launch --bench
step launch_2 60 $G/benches/launch --bench
step launch_3 60 $G/benches/launch --bench
fresh; rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 80 $G/examples/quickstart
step quickstart_second 40 $G/examples/quickstart
unset JITUNE_CACHE
for s in gpu_engine gpu_graph gpu_single_flight gpu_kernels gpu_speed; do
  fresh; step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
