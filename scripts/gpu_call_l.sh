#!/usr/bin/env bash
# Device call L (issue 18): call K found that NVRTC compiles a config it compiled before, even in
# another process, in ~16-25 ms instead of 0.2-1.7 s of CPU: a cache. Where is it? And the tuning
# breakdown on a fresh machine (cold), with where the CPU went (this process's threads, the
# compile workers, the machine).
TOTAL_S=${TOTAL_S:-200}
source "$(dirname "$0")/gpu_lib.sh"
env | grep -iE 'cuda|nv|cache|tmp|home|xdg' | sort > "$OUT/env.log"
step tune_breakdown 80 $G/benches/tune_breakdown --bench
touch /tmp/marker_l; sleep 1
step nvrtc_probe 60 $G/examples/nvrtc_probe
step new_files 30 bash -c 'find / -xdev -newer /tmp/marker_l -type f 2>/dev/null | grep -vE "^/(proc|sys)/|/tmp/out/" | head -80; echo; ls -la ~ ~/.nv ~/.cache 2>&1 | head -40; du -sh ~/.nv ~/.cache /tmp 2>/dev/null'
summary
cd "$OUT" && for f in *.log; do echo "##### $f"; cat "$f"; done > all_logs.txt && rm -f -- *.log
