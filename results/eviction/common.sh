# Sourced by results/eviction/run.sh and gist.sh: the settings every issue-32 run shares (SmolLM2-135M, this
# 2-core CPU, one torch thread a job). Training runs resume from their checkpoint when it is there.
export OMP_NUM_THREADS=1
E=results/eviction
PY=${PY:-.venv/bin/python}
FM=${FM:-.venv/bin/flashmem}
# The question window: the prompt's last N tokens, read again after the cut. 26 at 128 tokens and 28 at 512
# hold the whole question and never the needle's value (results/recall/window_check.py, 500 items a split).
W128=26; W512=28
resume() { [ -f "$1/checkpoint/manifest.json" ] && echo --resume || true; }
train() {  # train NAME [flags]: a memory in $E/memories/NAME, resumed when its checkpoint is there
  local d=$E/memories/$1
  python3 results/done.py "$d" || $FM train --threads 1 --out "$d" "${@:2}" $(resume "$d")
}
# Every run: a new recall document at every example (--stream), 4 questions per document = one document a
# step, the memory made at the end of the document before the question (--query-agnostic), the document
# cut from the cache after it (only the sinks, the memory and the question window remain).
CUT128=(--data recall:context=128,facts=4 --stream --questions-per-document 4 --batch-size 4
        --prompt-window $W128 --no-trigger-memory --val-size 64 --eval-every 100 --save-every 25 --max-length 400)
STREAM128=("${CUT128[@]}" --query-agnostic --stop-at ${STOP:-500})
# One fact a document: the same cut (the 26-token window holds every question and never the value:
# eval/c128f1/window_check.json, 500 items a split), 4 documents a step.
ONE128=(--data recall:context=128,facts=1 --stream --questions-per-document 1 --batch-size 4 --prompt-window $W128
        --no-trigger-memory --val-size 64 --eval-every 100 --save-every 25 --max-length 400 --query-agnostic
        --stop-at ${STOP:-500})
