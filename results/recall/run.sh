#!/usr/bin/env bash
# Issue 11, part 3: a task that needs the context. SmolLM2-135M on the generated recall set: a document
# of filler prose holding 16 key-value facts, a question about one of them; exact match of the 4-digit value.
# Memories are trained on recall:context=1024,facts=16 (train split, 64 held out) and evaluated on 500 test
# items at 1024 and 2048 tokens of context. The answers are one short sentence, shorter than the 24-token
# gap, so every memory here is the prompt-end one: what it reads from the document is all it can add.
# Resumable: rerun the same line.
#   bash results/recall/run.sh train-flashmem|train-memgen|sweep-softprompt|train-softprompt|eval-METHOD
#   bash results/recall/run.sh eval-pass   (eval-vanilla, -flashmem, -foreign-context, -mean-latents, -softprompt in one pass;
#                                           MemGen too once trained, unless NO_MEMGEN=1)
#   bash results/recall/run.sh check-window|train-cut|eval-cut-RUN|eval-cut-nll-RUN   (the cut experiment, below)
#   bash results/recall/run.sh train-cut-400|eval-cut400   (the same cut memory trained 4x longer)
set -euo pipefail
export OMP_NUM_THREADS=1
R=results/recall
DATA=recall:context=1024,facts=16
TRAIN=(--threads 1 --data $DATA --batch-size 4 --eval-every 25 --save-every 10 --seed 0 --max-length 1200)
# The cut experiment's evaluation: 512-token documents, greedy, 24 new tokens (LIMIT, default 500, from the environment)
CUT_EVAL=(--threads 1 --data recall:context=512,facts=16 --split test --limit ${LIMIT:-500} --batch-size 8 --max-new-tokens 24)
done_() { python3 results/done.py "$1"; }  # finished: its checkpoint, or a committed log, says so
resume() { [ -f "$1/checkpoint/manifest.json" ] && echo --resume || true; }
train() {  # train FOLDER METHOD LR STEPS [extra]
  local d=$R/memories/$1
  done_ "$d" || flashmem train "${TRAIN[@]}" --method "$2" --lr "$3" --steps "$4" --out "$d" "${@:5}" $(resume "$d")
}
case "$1" in
  train-flashmem) train flashmem flashmem 3e-4 100 ;;
  train-memgen) train memgen memgen 3e-4 100 --budget 2 ;;
  sweep-softprompt)  # 30 steps per rate; LRS (default: all four, 2.5 decades) picks learning rates, so two lanes can split the sweep
    for lr in ${LRS:-1e-3 1e-2 1e-1 3e-1}; do train sweep_softprompt_lr$lr softprompt $lr 30 --eval-every 30; done ;;
  train-softprompt) train softprompt softprompt "$(python3 results/best_lr.py $R/memories)" 100 --eval-every 50 ;;  # held-out loss at 0, 50, 100 (time)
  # The cut experiment: the prompt is cut from the cache after the prompt-end memory (`--prompt-window 28`: the
  # attention sinks stay, the last 28 prompt tokens, which hold the question and the chat turn and never the
  # value, are read again after the memory), so the fact reaches the answer only through the latent vectors.
  # Shorter documents (512 tokens) keep it inside one session here.
  check-window) mkdir -p $R/eval/cut_c512
    python3 $R/window_check.py recall:context=512,facts=16 28 > $R/eval/cut_c512/window_check.json ;;
  train-cut) train cut_flashmem flashmem 3e-4 100 --data recall:context=512,facts=16 --prompt-window 28 ;;
  train-cut-400) train cut_flashmem_400 flashmem 3e-4 400 --data recall:context=512,facts=16 --prompt-window 28 --eval-every 50 ;;
  eval-cut400)  # the 400-step cut memory and its foreign-context ablation in one pass (generation, then NLL);
    # they pair with eval-cut-vanilla's records
    E=$R/eval/cut_c512; M=$R/memories/cut_flashmem_400
    for mode in --no-nll --nll-only; do
      name=; [ $mode = --nll-only ] && name=nll_
      flashmem eval "${CUT_EVAL[@]}" $mode --method flashmem --memory $M --out $E/${name}flashmem400.json \
        --also "--ablate foreign-context --out $E/${name}flashmem400_foreign-context.json"
    done ;;
  eval-cut-*)  # (before eval-*, which would match it) vanilla, vanilla-whole (no cut), flashmem, foreign-context,
    # flashmem-uncut (the 1,024-token memory trained without the cut, cut at evaluation); eval-cut-nll-RUN: the
    # reference answers' NLL only (--nll-only), paired per question. LIMIT (default 500) from the environment.
    what=${1#eval-cut-}; mode=--no-nll; name=
    if [[ $what == nll-* ]]; then what=${what#nll-}; mode=--nll-only; name=nll_; fi
    EVAL=("${CUT_EVAL[@]}" $mode)
    E=$R/eval/cut_c512; CUT=(--prompt-window 28)
    case $what in
      vanilla-whole) flashmem eval "${EVAL[@]}" --method vanilla --out $E/${name}vanilla_whole.json ;;
      vanilla) flashmem eval "${EVAL[@]}" "${CUT[@]}" --method vanilla --out $E/${name}vanilla.json ;;
      flashmem) flashmem eval "${EVAL[@]}" --method flashmem --memory $R/memories/cut_flashmem --out $E/${name}flashmem.json ;;
      foreign-context) flashmem eval "${EVAL[@]}" --method flashmem --memory $R/memories/cut_flashmem \
        --ablate foreign-context --out $E/${name}flashmem_foreign-context.json ;;
      flashmem-uncut) flashmem eval "${EVAL[@]}" "${CUT[@]}" --method flashmem --memory $R/memories/flashmem \
        --out $E/${name}flashmem_uncut.json ;;
      *) echo "unknown cut run $what"; exit 2 ;;
    esac ;;
  eval-*)  # eval-vanilla, eval-flashmem, eval-softprompt, eval-memgen, eval-foreign-context, eval-mean-latents, eval-pass
    # (the last two: FlashMem's context ablations). CTX (default 1024) and LIMIT (default 500) from the
    # environment; records resume and a larger LIMIT extends the same run.
    what=${1#eval-}; ctx=${CTX:-1024}
    EVAL=(--threads 1 --data recall:context=$ctx,facts=16 --split test --limit ${LIMIT:-500} --batch-size 8
          --max-new-tokens 24 --no-nll)
    E=$R/eval/c$ctx
    M=$R/memories
    case $what in
      vanilla) flashmem eval "${EVAL[@]}" --method vanilla --out $E/vanilla.json ;;
      pass)  # vanilla, FlashMem, its two ablations, the soft prompt and (once trained) MemGen in one pass (--also):
        # the same runs and records as their own stages, but each batch's documents are encoded once, not six times
        # (the foreign-context batch and MemGen's weaver still read theirs)
        ALSO=("--method flashmem --memory $M/flashmem --out $E/flashmem.json"
              "--method flashmem --memory $M/flashmem --ablate foreign-context --out $E/flashmem_foreign-context.json"
              "--method flashmem --memory $M/flashmem --ablate mean-latents --out $E/flashmem_mean-latents.json"
              "--method softprompt --memory $M/softprompt --out $E/softprompt.json")
        # NO_MEMGEN=1 leaves MemGen out (at 2,048 tokens it costs more than the other five together; its records resume later)
        if [ -z "${NO_MEMGEN:-}" ] && done_ $M/memgen; then ALSO+=("--method memgen --memory $M/memgen --out $E/memgen.json"); fi
        flashmem eval "${EVAL[@]}" --method vanilla --out $E/vanilla.json --also "${ALSO[@]}" ;;
      foreign-context|mean-latents)
        flashmem eval "${EVAL[@]}" --method flashmem --memory $R/memories/flashmem --ablate $what --out $E/flashmem_$what.json ;;
      *) flashmem eval "${EVAL[@]}" --method $what --memory $R/memories/$what --out $E/$what.json ;;
    esac ;;
  *) echo "unknown stage $1"; exit 2 ;;
esac
