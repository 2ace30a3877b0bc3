#!/usr/bin/env bash
# Device call N (issue 18, closing): every GPU suite after this stop's changes (the compact
# launch path, searches that end within their budgets, batches that stop waiting for compile
# stragglers, the image source's arrivals), the quickstart's first and second runs with the
# rebalanced budgets (6.5 s sgemm, 5.5 s hgemm, 1.5 s softmax), and the launch bench. Every
# step starts from an empty compute cache (CUDA_CACHE_PATH): see call M.
TOTAL_S=${TOTAL_S:-560}
source "$(dirname "$0")/gpu_lib.sh"
export JITUNE_LOAD_SECS=40
fresh; rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 80 $G/examples/quickstart
step quickstart_second 40 $G/examples/quickstart
unset JITUNE_CACHE
fresh; step launch 60 $G/benches/launch --bench
for s in gpu_engine gpu_single_flight gpu_inherit gpu_cli gpu_faults gpu_tma gpu_kernels \
         gpu_graph gpu_speed gpu_sgemm cache_load_gpu gpu_hgemm; do
  fresh; step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
