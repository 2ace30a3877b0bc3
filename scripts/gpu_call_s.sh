#!/usr/bin/env bash
# Device call S (issue 18): a cold search's first batch compiles while its reference runs alone
# (LFBO's design handed over before its start; the GPU evaluator's first batch prefetched): the
# breakdown and the quickstart's first run, each from an empty compute cache, and gpu_speed.
TOTAL_S=${TOTAL_S:-300}
source "$(dirname "$0")/gpu_lib.sh"
fresh; step tune_breakdown 80 $G/benches/tune_breakdown --bench
fresh; rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 80 $G/examples/quickstart
unset JITUNE_CACHE
fresh; step gpu_speed 120 $G/tests/gpu_speed --test-threads=1 --nocapture
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
