#!/usr/bin/env bash
# The kvpress baselines' own virtual environment: results/kvpress/.venv (git-ignored).
#
# kvpress 0.5.x pins transformers < 5.3, flashmem's own .venv runs a newer transformers, so the two
# cannot share one environment. This venv gets torch (the CPU wheel first: an unpinned torch pulls a
# multi-GB CUDA build), then kvpress pinned, with whatever transformers kvpress resolves. flashmem itself
# is NOT installed here: run_press.py loads the few pure-Python modules it needs (the recall generator,
# answer scoring, the records file) straight from this repository's src/ without running
# flashmem/__init__.py, which would import flashmem's transformers-5 code (see run_press.py's docstring).
#
# Usage: bash results/kvpress/setup.sh        (re-running it is safe; it only installs what is missing)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PY:-python3}"
VENV="$HERE/.venv"
KVPRESS_VERSION="0.5.5"   # the latest 0.5.x pip resolved when this folder was made
TORCH_VERSION="2.13.0"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "kvpress==$KVPRESS_VERSION"
# Loading a safetensors folder needs no gguf; transformers only wants it for GGUF files. Not installed.

"$VENV/bin/pip" freeze | grep -i -E '^(kvpress|transformers|torch|accelerate|tokenizers|safetensors)==' \
  > "$HERE/versions.txt"
"$VENV/bin/python" --version >> "$HERE/versions.txt"
cat "$HERE/versions.txt"
