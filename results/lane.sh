#!/usr/bin/env bash
# Run experiment stages one after another in the background, each logged to results/<run>/logs/<stage>.log:
#   bash results/lane.sh [--after PID] run3/train.sh:flashmem-norm recall/run.sh:train-flashmem ...
# --after PID waits for that process to end first (two lanes share the two cores, one torch thread each).
set -u
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
if [ "${1:-}" = "--after" ]; then
  while kill -0 "$2" 2>/dev/null; do sleep 30; done
  shift 2
fi
for item in "$@"; do
  script=${item%%:*}; stage=${item#*:}
  log=results/$(dirname "$script")/logs/$stage.log
  mkdir -p "$(dirname "$log")"
  echo "$(date +%FT%T) start $item" >> results/lanes.log
  bash "results/$script" "$stage" >> "$log" 2>&1
  rc=$?  # before $(date) below, which would reset it
  echo "$(date +%FT%T) end $item rc=$rc" >> results/lanes.log
done
