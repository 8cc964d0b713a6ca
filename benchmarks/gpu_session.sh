#!/usr/bin/env bash
# What a lent GPU machine runs in one call: the CUDA correctness checks, then benches, each a
# `gpu_table3.sh` run (one `flashmem bench` per context, bf16, batch 1, the paper schedule). Writes to
# OUT_DIR: gpu.txt (device and versions), gpu_checks.json/.log, and per bench NAME: NAME.md (the table)
# and NAME_raw.tar.gz (every bench JSON and log).
#   bash benchmarks/gpu_session.sh OUT_DIR [STAGE ...]
# Stages (default: checks profile compiled table3):
#   checks     benchmarks/gpu_checks.py
#   profile    issue 34's first step: one eager decoding step at 64k under torch.profiler (benchmarks/profile_step.py:
#              plain, monitor, consolidation; host against kernel time, attention's share)
#   qwen05     issue 12: random:qwen2.5-coder-0.5b (the alias's architecture) at 1k and 4k, 5 repeats
#   table3     the paper's Table 3 setting: random:qwen2.5-1.5b at CONTEXTS (default 64k, 8k, 16k, 32k)
#   compiled   issue 34: the same at COMPILED_CONTEXTS (default 64k) with the compiled step (--compile: one CUDA
#              graph per step) for every method, and transformers' own compiled generate as the peer
# SESSION_BUDGET_S (default 500): a stage not started by then is skipped, and each bench's budget is
# what is left, so the call ends inside the device's 10-minute limit.
# The GPU image has transformers 5.17 (which ignores our cache argument): wheels of transformers
# 5.24.0 and peft 0.21.2 in .whl/ are installed first when present.
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [STAGE ...]}
shift
STAGES=${*:-checks profile compiled table3}
SESSION_BUDGET_S=${SESSION_BUDGET_S:-500}
HERE=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
left() { echo $(( SESSION_BUDGET_S - ($(date +%s) - start) )); }
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_session: wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} > "$OUT/gpu.txt" 2>&1

bench() {  # NAME, then gpu_table3.sh's settings as VAR=value words
  local name=$1; shift
  local budget; budget=$(left)
  # gpu_table3 starts no context after BUDGET_S and stops one after CONTEXT_TIMEOUT_S: both from what is left.
  env "$@" BUDGET_S=$(( budget - 60 )) CONTEXT_TIMEOUT_S=$budget PYTHON=python3 \
    bash "$HERE/gpu_table3.sh" "/tmp/$name"
  tar czf "$OUT/${name}_raw.tar.gz" -C /tmp "$name"
  cp "/tmp/$name/table3.md" "$OUT/$name.md" 2>/dev/null
}

for stage in $STAGES; do
  if (( $(left) < 60 )); then echo "gpu_session: stage $stage skipped: the ${SESSION_BUDGET_S}s budget is spent"; continue; fi
  case $stage in
    checks)
      timeout "${CHECKS_TIMEOUT_S:-160}" python3 "$HERE/gpu_checks.py" "$OUT/gpu_checks.json" > "$OUT/gpu_checks.log" 2>&1
      echo "gpu_session: gpu_checks exit $?" ;;
    profile)
      timeout "${PROFILE_TIMEOUT_S:-150}" python3 "$HERE/profile_step.py" --model random:qwen2.5-1.5b \
        --context "${PROFILE_CONTEXT:-65536}" --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
      echo "gpu_session: profile exit $?" ;;
    qwen05) bench qwen05 MODEL=random:qwen2.5-coder-0.5b CONTEXTS="${QWEN_CONTEXTS:-1024 4096}" ;;
    compiled) bench compiled CONTEXTS="${COMPILED_CONTEXTS:-65536}" REPEATS="${REPEATS:-3}" \
      METHODS=vanilla,flashmem,memgen,transformers BENCH_FLAGS=--compile ;;
    table3) bench table3 CONTEXTS="${CONTEXTS:-65536 8192 16384 32768}" REPEATS="${REPEATS:-5}" ;;
    *) echo "gpu_session: unknown stage $stage"; exit 2 ;;
  esac
  echo "gpu_session: $stage done after $(( $(date +%s) - start ))s"
done
echo "gpu_session: done"
