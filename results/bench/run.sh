#!/usr/bin/env bash
# CPU efficiency (issues 10 and 13), SmolLM2-135M fp32, one torch thread, on this project's 2-core machine
# with another single-thread job beside it. Every figure is a ratio taken within one run (methods
# alternate run by run). FlashMem: the run-3 memory (its threshold tau = 3.322 for `calibrated`);
# MemGen: an untrained one (speed does not depend on its weights; the paper schedule sets its steps).
# 256 new tokens, 5 repeats unless said.
#   bash results/bench/run.sh monitor|b1|b1-7k|fixed96|b8
set -euo pipefail
export OMP_NUM_THREADS=1
B=results/bench
MEM=(--memory results/run3/memories/flashmem --threads 1)
N256=(--new-tokens 256)
case "$1" in
  monitor) python benchmarks/monitor_overhead.py --contexts 1024,4096 --new-tokens 64 --repeats 5 --threads 1 ;;
  b1)  # the throughput targets at batch 1: 4k under the calibrated and the paper schedule
    flashmem bench "${MEM[@]}" "${N256[@]}" --methods vanilla,flashmem --contexts 4096 --schedules calibrated,paper --repeats 5 \
      --out $B/cpu_b1_4k.json ;;
  b1-7k)  # FlashMem against MemGen at 7k, paper schedule (a MemGen run re-encodes 7k tokens 8 times: 3 repeats)
    flashmem bench "${MEM[@]}" "${N256[@]}" --contexts 7168 --schedules paper --repeats 3 --no-memory-workers \
      --out $B/cpu_b1_7k.json ;;
  fixed96)  # run 2's setting (prompt-end memory + 2 consolidations, 96 new tokens) at 1k and 4k: issue 10's
    # "speed unchanged" check against run 2's ratios (3 repeats instead of 2)
    flashmem bench "${MEM[@]}" --new-tokens 96 --contexts 1024,4096 --schedules fixed --repeats 3 --no-memory-workers \
      --out $B/cpu_fixed96.json ;;
  b8)  # batch 8 at 4k, the paper schedule (each run prefills 8 x 4k tokens: 3 repeats)
    flashmem bench "${MEM[@]}" "${N256[@]}" --methods vanilla,flashmem --contexts 4096 --batch-sizes 8 --schedules paper \
      --repeats 3 --no-memory-workers --out $B/cpu_b8_4k.json ;;
  *) echo "unknown stage $1"; exit 2 ;;
esac
