#!/usr/bin/env bash
# Device call I: after batches sized to the compile pool, speculative compiles and warm workers
# (issue 18): the launch bench's split of the hit path, a quickstart first run on the new
# budgets, the tuning breakdown; issue 14 again with each bucket tuned at its first shape: four
# servers on one cache, and two single servers (the second is the control: how far two quiet
# single processes land apart), each pair re-timed side by side with `verify --against`.
TOTAL_S=${TOTAL_S:-400}
source "$(dirname "$0")/gpu_lib.sh"
export JITUNE_LOAD_SECS=40
step launch 60 $G/benches/launch --bench
rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
step quickstart_first 120 $G/examples/quickstart
unset JITUNE_CACHE
step tune_breakdown 90 $G/benches/tune_breakdown --bench
rm -f /tmp/four.sqlite* /tmp/single*.sqlite*
step four_servers 60 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 4 /tmp/four.sqlite"
step single_server 60 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 1 /tmp/single.sqlite"
step single_server_b 60 bash -c "$(declare -f servers); G=$G OUT=$OUT servers 1 /tmp/singleb.sqlite"
specs="kernels/sgemm.toml kernels/softmax.toml kernels/hgemm_sm90_tma_f16.toml"
step verify_four 90 $G/jitune verify $specs --cache /tmp/four.sqlite --against /tmp/single.sqlite --threshold 3 --samples 20
step verify_control 90 $G/jitune verify $specs --cache /tmp/singleb.sqlite --against /tmp/single.sqlite --threshold 3 --samples 20
(cd /tmp && tar czf "$OUT/caches.tgz" four.sqlite* single.sqlite* singleb.sqlite*)
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
