#!/usr/bin/env bash
# Device call C (2026-12-02): every GPU suite again after the split of gpu/measure.rs, cache/
# and the remote client (issue 13); the launch bench with its raw-pointer side, the tuning
# breakdown (transpose, sgemm, softmax) and the server's first pass with and without preloading
# (issue 18); the graph server (issue 17); gpu_hgemm with what is left.
# Stage first (here): ../shared/gpu/stage; cp target/release/jitune .gpu/
source "$(dirname "$0")/gpu_lib.sh"
step launch 60 $G/benches/launch --bench
for s in gpu_engine gpu_single_flight gpu_inherit gpu_speed gpu_graph gpu_faults gpu_tma \
         gpu_sgemm gpu_kernels gpu_cli; do
  step "$s" 120 $G/tests/$s --test-threads=1 --nocapture
done
# The first pass of a cold server, without and with preloading (fresh cache files each).
rm -f /tmp/np.sqlite* /tmp/pl.sqlite*
step server_cold 40 $G/examples/server --threads 4 --seconds 20 --tune-s 4 --cache /tmp/np.sqlite
step server_preload 40 $G/examples/server --preload --threads 4 --seconds 20 --tune-s 4 --cache /tmp/pl.sqlite
step tune_breakdown 100 $G/benches/tune_breakdown --bench
step graph_server 70 $G/examples/graph_server --replays 1000 --tune-s 3 --max-evals 24 --wait-s 40 --concurrent-s 20
step gpu_hgemm 300 $G/tests/gpu_hgemm --test-threads=1 --nocapture
summary
grep -h -E "first pass|preloaded" "$OUT/server_cold.log" "$OUT/server_preload.log"
