#!/usr/bin/env bash
# Device call K (issue 18): why NVRTC is 25 ms per config in one process and 600 ms in another
# (the probe: in process before and after a context, one worker, a pool of 16, CPU affinity and
# CPU time); the launch bench after the compact argument layout; the tuning breakdown; the
# quickstart's first and second runs with searches that end within their time budgets.
TOTAL_S=${TOTAL_S:-330}
source "$(dirname "$0")/gpu_lib.sh"
(command -v strace perf taskset numactl || true) > "$OUT/tools.log" 2>&1
step nvrtc_probe 120 $G/examples/nvrtc_probe
step launch 60 $G/benches/launch --bench
step tune_breakdown 60 $G/benches/tune_breakdown --bench
rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 80 $G/examples/quickstart
step quickstart_second 40 $G/examples/quickstart
unset JITUNE_CACHE
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
