#!/usr/bin/env bash
# Device call O (issue 18, closing): the launch bench twice (its run-to-run spread) after the
# plan stopped reading the spec on a hit; gpu_hgemm with the time it needs on a cold compute
# cache (call N cut it at 120 s); LFBO against the recorded SGEMM 4096^3 optimum after the
# search changes (batches that leave their stragglers, budgets that end searches); the server's
# first pass with kernels preloaded. Cold compute cache for each step (see call M).
TOTAL_S=${TOTAL_S:-470}
source "$(dirname "$0")/gpu_lib.sh"
fresh; step launch_1 40 $G/benches/launch --bench
step launch_2 40 $G/benches/launch --bench
fresh; rec=$root/tests/data/sgemm_4096x4096x4096_H200.json.gz
step tune_sgemm 100 $G/benches/tune_sgemm --bench --against "$rec"
fresh; step server_preload 45 $G/examples/server --preload --threads 4 --seconds 20 --tune-s 4 --cache /tmp/pl.sqlite
fresh; step gpu_hgemm 280 $G/tests/gpu_hgemm --test-threads=1 --nocapture
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
