#!/usr/bin/env bash
# Device call D (2026-12-02): the launch bench's four sides (issue 18), gpu_inherit three times
# with Tuner::shutdown (it aborted at exit once in call C), then LFBO against the exhaustive
# optimum of the SGEMM space at 4096^3 (issue 18): the space recorded by record_space in this
# call (stopped at --max-s if need be, and then marked incomplete), LFBO's 100 evaluations and
# both winners re-timed side by side by tune_sgemm --against.
source "$(dirname "$0")/gpu_lib.sh"
step launch 60 $G/benches/launch --bench
for i in 1 2 3; do step "gpu_inherit_$i" 60 $G/tests/gpu_inherit --test-threads=1 --nocapture; done
rec=$OUT/sgemm_4096x4096x4096_H200.json.gz
step record 420 $G/examples/record_space --kernel sgemm --shape 4096x4096x4096 --max-s "${REC_MAX_S:-330}" --out "$rec"
step tune_sgemm 150 $G/benches/tune_sgemm --bench --against "$rec"
summary
for f in launch gpu_inherit_1 gpu_inherit_2 gpu_inherit_3 tune_sgemm; do echo "--- $f"; tail -n 14 "$OUT/$f.log"; done
grep -h "free()\|Aborted\|SIGABRT" "$OUT"/gpu_inherit_*.log
cat "$OUT"/*.log > "$OUT/all_logs.txt"; rm -f "$OUT"/*.log
