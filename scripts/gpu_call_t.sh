#!/usr/bin/env bash
# Device call T (issue 18): the quickstart's first run before (2e136bc, `quickstart_old`) and
# after (c861588) a cold search's first batch compiles beside the reference, twice each,
# alternating, each from an empty compute cache and an empty jitune cache: call S's SGEMM decode
# winner was 8% slower than call P's, and earlier runs spread as widely (0.0436-0.0502 ms).
TOTAL_S=${TOTAL_S:-280}
source "$(dirname "$0")/gpu_lib.sh"
for i in 1 2; do
  for v in quickstart_old quickstart; do
    fresh; rm -f /tmp/qs.sqlite*; export JITUNE_CACHE=/tmp/qs.sqlite
    step "${v}_$i" 60 $G/examples/$v
  done
done
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
