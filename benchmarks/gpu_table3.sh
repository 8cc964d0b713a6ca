#!/usr/bin/env bash
# The paper's efficiency setting (Table 3) on a GPU: vanilla, FlashMem and MemGen on Qwen2.5-1.5B's
# architecture with random weights (speed does not depend on the weights; the GPU machine cannot
# download them), bf16, batch 1, 8 rounds of 32 text tokens each after a K=8 consolidation (256 new
# tokens), at 8k, 16k, 32k and 64k context: tokens/s, per-step latency, peak GPU memory. One
# `flashmem bench` per context, ascending, each writing its own JSON, so a run cut short keeps what
# finished; then one table (table3.md) beside the paper's figures.
#
#   bash benchmarks/gpu_table3.sh OUT_DIR
# Settings (environment): MODEL, CONTEXTS, NEW_TOKENS, REPEATS, DEVICE, DTYPE, METHODS, BENCH_FLAGS (more
# `flashmem bench` options, e.g. --compile), BUDGET_S (a context not
# started within BUDGET_S seconds is skipped; default 390, to finish under 8 minutes on an H100/H200),
# CONTEXT_TIMEOUT_S (one context's bench is stopped after this; default 300).
# On the CPU with a small model, as a check of the script itself:
#   MODEL=random:smollm2-135m CONTEXTS="64 128" DEVICE=cpu DTYPE=float32 NEW_TOKENS=64 REPEATS=2 \
#     bash benchmarks/gpu_table3.sh /tmp/table3
set -u
OUT=${1:?usage: gpu_table3.sh OUT_DIR}
MODEL=${MODEL:-random:qwen2.5-1.5b}
CONTEXTS=${CONTEXTS:-8192 16384 32768 65536}
NEW_TOKENS=${NEW_TOKENS:-256}
REPEATS=${REPEATS:-5}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
BUDGET_S=${BUDGET_S:-390}
CONTEXT_TIMEOUT_S=${CONTEXT_TIMEOUT_S:-300}  # one context's bench is stopped after this
PYTHON=${PYTHON:-python3}
METHODS=${METHODS:-vanilla,flashmem,memgen}
BENCH_FLAGS=${BENCH_FLAGS:-}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
start=$(date +%s)
for ctx in $CONTEXTS; do
  if (( $(date +%s) - start > BUDGET_S )); then
    echo "gpu_table3: context $ctx skipped: the ${BUDGET_S}s budget is spent" | tee -a "$OUT/skipped.txt"
    continue
  fi
  timeout "$CONTEXT_TIMEOUT_S" "$PYTHON" -m flashmem bench --model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" --contexts "$ctx" \
    --new-tokens "$NEW_TOKENS" --repeats "$REPEATS" --schedules paper --batch-sizes 1 --methods "$METHODS" $BENCH_FLAGS \
    --out "$OUT/table3_$ctx.json" > "$OUT/table3_$ctx.md" 2> "$OUT/table3_$ctx.log" \
    || echo "gpu_table3: context $ctx failed (see table3_$ctx.log)" | tee -a "$OUT/skipped.txt"
  echo "gpu_table3: context $ctx done after $(( $(date +%s) - start ))s"
done
"$PYTHON" "$HERE/table3.py" "$OUT"/table3_*.json | tee "$OUT/table3.md"
