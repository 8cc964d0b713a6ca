#!/usr/bin/env bash
# Issue 33: every kvpress press on 512-token recall documents with 16 facts (the first LIMIT, default 200,
# test items), one budget and mode a stage; run.sh's presses-c512-k8 is the query-agnostic K=8 point.
#   bash results/eviction/presses.sh MODE-kK      e.g. aware-k8, agnostic-k16, agnostic-k32, agnostic-k64
# MODE: agnostic (the document compressed before the question exists) or aware (the question compressed
# with it); K: KV entries kept per layer besides the sinks (results/kvpress/README.md, "Budget").
# PRESSES (default: all five) narrows a stage. Each press's records resume.
set -euo pipefail
export OMP_NUM_THREADS=1
E=results/eviction
stage=${1:?usage: presses.sh MODE-kK}
mode=${stage%-k*}; kept=${stage##*-k}
case "$mode" in agnostic|aware) ;; *) echo "unknown mode in $stage" >&2; exit 2 ;; esac
suffix=k$kept; [ "$mode" = aware ] && suffix=aware_k$kept
for press in ${PRESSES:-streaming knorm expected_attention kvzip snapkv}; do
  results/kvpress/.venv/bin/python results/kvpress/run_press.py --press "$press" --kept "$kept" --mode "$mode" \
    --data recall:context=512,facts=16 --split test --limit "${LIMIT:-200}" --out "$E/eval/c512/press_${press}_$suffix.json"
done
