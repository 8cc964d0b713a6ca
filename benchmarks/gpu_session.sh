#!/usr/bin/env bash
# What a lent GPU machine runs in one call: the CUDA correctness checks, then the paper's efficiency
# setting (gpu_table3.sh, 64k first so the headline survives a short budget). Writes to OUT_DIR:
# gpu.txt (device and versions), gpu_checks.json/.log, table3.md, table3_raw.tar.gz (every bench JSON).
#   bash benchmarks/gpu_session.sh OUT_DIR
# The GPU image has transformers 5.17 (which ignores our cache argument): wheels of transformers
# 5.24.0 and peft 0.21.2 in .whl/ are installed first when present.
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_session: wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} > "$OUT/gpu.txt" 2>&1
timeout "${CHECKS_TIMEOUT_S:-100}" python3 benchmarks/gpu_checks.py "$OUT/gpu_checks.json" > "$OUT/gpu_checks.log" 2>&1
echo "gpu_session: gpu_checks exit $?"
CONTEXTS=${CONTEXTS:-65536 8192 16384 32768} BUDGET_S=${BUDGET_S:-280} CONTEXT_TIMEOUT_S=${CONTEXT_TIMEOUT_S:-180} \
  PYTHON=python3 bash benchmarks/gpu_table3.sh /tmp/table3
tar czf "$OUT/table3_raw.tar.gz" -C /tmp table3
cp /tmp/table3/table3.md "$OUT/" 2>/dev/null
echo "gpu_session: done"
