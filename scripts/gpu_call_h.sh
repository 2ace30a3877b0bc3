#!/usr/bin/env bash
# Device call H: issue 14's side-by-side re-timing of the four-server winners against the
# single server's (both caches from call G, carried in .gpu-pack/caches.tgz); issue 18's compile
# bench with NVRTC's builtins library held and not, the launch bench's split of jitune's extra
# time, the tuning breakdown with the pool's own compile times, a quickstart first run.
TOTAL_S=${TOTAL_S:-420}
source "$(dirname "$0")/gpu_lib.sh"
mkdir -p /tmp/caches && tar xzf .gpu-pack/caches.tgz -C /tmp/caches
specs="kernels/sgemm.toml kernels/softmax.toml kernels/hgemm_sm90_tma_f16.toml"
step verify_against 150 $G/jitune verify $specs --cache /tmp/caches/four.sqlite --against /tmp/caches/single.sqlite --threshold 3 --samples 20
step verify_against_json 150 $G/jitune verify $specs --cache /tmp/caches/four.sqlite --against /tmp/caches/single.sqlite --threshold 3 --samples 20 --json
step launch 60 $G/benches/launch --bench
step compile 100 $G/benches/compile --bench
step gpu_cli 60 $G/tests/gpu_cli --test-threads=1 --nocapture
step tune_breakdown 90 $G/benches/tune_breakdown --bench
rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 130 $G/examples/quickstart
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
