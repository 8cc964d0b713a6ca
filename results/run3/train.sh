#!/usr/bin/env bash
# Run 3 (issue 11), SmolLM2-135M: the memories behind the "is it memory?" comparison, all with the same
# data (GSM8K train minus 64 held-out), 100 steps of 4 examples, K=8, prompt-end memory plus at most 2
# triggered insertions (budget 2; FlashMem and the soft prompt: the monitor with tau from the untrained
# system, gap 24; MemGen: its delimiter rule, budget 2 instead of its default 3, so both get the same
# insertion budget). The soft prompt gets its own learning rate: a 30-step sweep over 2.5 decades
# (softprompt-sweep; LRS picks a subset so two lanes can split it), then 100 steps at the rate with the
# lowest held-out loss (softprompt).
# flashmem-norm: the same FlashMem with the length-normalised entropy (H / log n) as the monitor's signal.
#   bash results/run3/train.sh flashmem|flashmem-norm|memgen|softprompt-sweep|softprompt
set -euo pipefail
# Named data sets (gsm8k, mawps) come from $FLASHMEM_DATA_DIR; by default this repository's development
# folder beside the checkout (flashmem itself never guesses one).
export FLASHMEM_DATA_DIR="${FLASHMEM_DATA_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data}"
export OMP_NUM_THREADS=1
OUT=results/run3/memories
COMMON=(--threads 1 --data gsm8k --steps 100 --batch-size 4 --eval-every 25 --save-every 10 --seed 0)
# done: the run reached its last step (results/done.py); resume: a checkpoint exists (an interrupted run saves one).
done_() { python3 results/done.py "$1"; }
resume() { [ -f "$1/checkpoint/manifest.json" ] && echo --resume || true; }
case "$1" in
  flashmem)
    done_ $OUT/flashmem || flashmem train "${COMMON[@]}" --method flashmem --lr 3e-4 --out $OUT/flashmem $(resume $OUT/flashmem) ;;
  flashmem-norm)
    done_ $OUT/flashmem_norm || flashmem train "${COMMON[@]}" --method flashmem --lr 3e-4 --entropy normalized --out $OUT/flashmem_norm $(resume $OUT/flashmem_norm) ;;
  memgen)
    done_ $OUT/memgen || flashmem train "${COMMON[@]}" --method memgen --lr 3e-4 --budget 2 --out $OUT/memgen $(resume $OUT/memgen) ;;
  softprompt-sweep)
    for lr in ${LRS:-1e-3 1e-2 1e-1 3e-1}; do
      d=$OUT/sweep_softprompt_lr$lr
      done_ $d || flashmem train "${COMMON[@]}" --method softprompt --lr $lr --steps 30 --eval-every 30 --out $d $(resume $d)
    done ;;
  softprompt)
    lr=$(python3 results/best_lr.py $OUT)
    done_ $OUT/softprompt || flashmem train "${COMMON[@]}" --method softprompt --lr "$lr" --eval-every 50 --out $OUT/softprompt $(resume $OUT/softprompt) ;;
esac
