#!/usr/bin/env bash
# Runs a command again and again; when the resident memory of its process
# tree passes a limit, dumps every process's Python stacks with their local
# variables (py-spy) and kills the tree. For memory blow-ups that show up in
# one run of many (see the README's "Preprocessing" benchmark notes).
#
#   pip install py-spy   # not a project dependency
#   LIMIT_MB=4500 RUNS=20 bench/watch_rss.sh .venv/bin/python \
#       bench/bench_preprocess.py --tokenizers=char,word
#
# Writes watch-rss/run-N.log (the command's output) and, when the limit is
# passed, watch-rss/dump-N.txt; prints one line per run with its peak.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: LIMIT_MB=.. RUNS=.. $0 command [args...]" >&2; exit 2; }
LIMIT_MB=${LIMIT_MB:-5000}
RUNS=${RUNS:-10}
OUT=${OUT:-watch-rss}
PYSPY=${PYSPY:-$(command -v py-spy || echo "$(dirname "$0")/../.venv/bin/py-spy")}
[ -x "$PYSPY" ] || { echo "py-spy not found (pip install py-spy, or set PYSPY)" >&2; exit 2; }
mkdir -p "$OUT"
for run in $(seq 1 "$RUNS"); do
  setsid "$@" > "$OUT/run-$run.log" 2>&1 &
  pid=$!
  peak=0
  caught=""
  while kill -0 "$pid" 2>/dev/null; do
    # Processes of the command's session (setsid: session id = its pid).
    rss=$(ps -s "$pid" -o rss= | awk '{s += $1} END {print int(s / 1024)}')
    [ "$rss" -gt "$peak" ] && peak=$rss
    if [ "$rss" -gt "$LIMIT_MB" ]; then
      for p in $(ps -s "$pid" -o pid=); do
        echo "--- pid $p: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
        grep -E 'VmRSS|Threads' "/proc/$p/status" 2>/dev/null
        "$PYSPY" dump --locals --pid "$p" 2>&1
      done > "$OUT/dump-$run.txt"
      kill -9 -- "-$pid"
      caught=" (passed $LIMIT_MB MB at $(date +%T): $OUT/dump-$run.txt)"
      break
    fi
    sleep 0.5
  done
  wait "$pid"
  echo "run $run: exit $?, peak ${peak} MB${caught}"
done
