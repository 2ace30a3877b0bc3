#!/usr/bin/env bash
# Device call M (issue 18). Calls K and L found that NVRTC's CUBINs land in the driver's compute
# cache (~/.nv/ComputeCache): a config compiled before, by any process, compiles again in
# ~16-25 ms instead of 0.25-2 s. Every figure here is cold: each measured step gets a fresh,
# empty cache directory (CUDA_CACHE_PATH), as on a machine that never compiled these kernels.
# Steps: the tuning breakdown (batches that stop waiting for compile stragglers, the CPU used),
# the quickstart's first and second runs, the compile bench with every arm cold, the NVRTC
# probe with the cache disabled (is it that cache?), the launch bench.
TOTAL_S=${TOTAL_S:-420}
source "$(dirname "$0")/gpu_lib.sh"
fresh; step tune_breakdown 80 $G/benches/tune_breakdown --bench
fresh; rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 80 $G/examples/quickstart
step quickstart_second 40 $G/examples/quickstart
unset JITUNE_CACHE
fresh; step compile 120 $G/benches/compile --bench
step nvrtc_probe_cache_disabled 90 env CUDA_CACHE_DISABLE=1 $G/examples/nvrtc_probe
fresh; step launch 60 $G/benches/launch --bench
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
