#!/usr/bin/env bash
# CPU efficiency (issues 10 and 13), SmolLM2-135M fp32, one torch thread, on this project's 2-core machine
# with another single-thread job beside it. Every figure is a ratio taken within one run (methods
# alternate run by run). FlashMem: the run-3 memory (its threshold tau = 3.322 for `calibrated`);
# MemGen: the run-2 memory (delimiter trigger, budget 3). 256 new tokens, 5 repeats unless said.
#   bash results/bench/run.sh monitor|b1|b8
set -euo pipefail
export OMP_NUM_THREADS=1
B=results/bench
MEM=(--memory results/run3/memories/flashmem --memgen-memory results/run2/memories/memgen --new-tokens 256 --threads 1)
case "$1" in
  monitor) python benchmarks/monitor_overhead.py --contexts 1024,4096 --new-tokens 64 --repeats 5 --threads 1 ;;
  b1)  # the targets at batch 1: 4k under the calibrated and the paper schedule; 7k paper against MemGen
    flashmem bench "${MEM[@]}" --methods vanilla,flashmem --contexts 4096 --schedules calibrated,paper --repeats 5 \
      --out $B/cpu_b1_4k.json
    flashmem bench "${MEM[@]}" --contexts 7168 --schedules paper --repeats 5 --no-memory-workers \
      --out $B/cpu_b1_7k.json ;;
  b8)  # batch 8 at 4k, the paper schedule (each run prefills 8 x 4k tokens: 3 repeats)
    flashmem bench "${MEM[@]}" --methods vanilla,flashmem --contexts 4096 --batch-sizes 8 --schedules paper \
      --repeats 3 --no-memory-workers --out $B/cpu_b8_4k.json ;;
  *) echo "unknown stage $1"; exit 2 ;;
esac
