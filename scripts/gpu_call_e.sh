#!/usr/bin/env bash
# Device call E (2026-12-02): why tuning SGEMM took ~190 ms per candidate in tune_breakdown and
# the quickstart but ~21 ms in tune_sgemm (call D): the two benches back to back on one shape,
# breakdown's sgemm case alone first; the launch bench with jitune's lookup timed alone; the
# quickstart's first run on a fresh cache.
source "$(dirname "$0")/gpu_lib.sh"
step breakdown_sgemm 90 $G/benches/tune_breakdown --bench --cases sgemm
step tune_sgemm_2048 90 $G/benches/tune_sgemm --bench --shape 2048,2048,2048 --evals 60 --skip-exhaustive
step breakdown_all 120 $G/benches/tune_breakdown --bench
step launch 60 $G/benches/launch --bench
rm -f /tmp/qs.sqlite*
step quickstart_first 150 env JITUNE_CACHE=/tmp/qs.sqlite $G/examples/quickstart
summary
for f in breakdown_sgemm tune_sgemm_2048 breakdown_all launch quickstart_first; do echo "--- $f"; tail -n 16 "$OUT/$f.log"; done
cat "$OUT"/*.log > "$OUT/all_logs.txt"; rm -f "$OUT"/*.log
