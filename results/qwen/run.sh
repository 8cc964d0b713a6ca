#!/usr/bin/env bash
# Issue 12: Qwen2.5-Coder-0.5B-Instruct (`qwen2.5-coder-0.5b`, fp32, CPU, one thread per job).
# Every stage resumes where it stopped (training checkpoints, eval records); run the same line again.
#   bash results/qwen/run.sh STAGE       (stages below, in the order they were run)
set -euo pipefail
# Named data sets (gsm8k, mawps) come from $FLASHMEM_DATA_DIR; by default this repository's development
# folder beside the checkout (flashmem itself never guesses one).
export FLASHMEM_DATA_DIR="${FLASHMEM_DATA_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data}"
# THREADS=2 gives one stage both cores (used to finish FlashMem's training inside a session).
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS
R=results/qwen
MODEL=(--model qwen2.5-coder-0.5b --threads $THREADS --prompt boxed)
# Training: GSM8K train, first 864 rows (800 to learn from, 64 held out), the model's own greedy correct
# solutions as targets (collected once, shared by every method), 100 steps of 4, K=8, prompt-end memory +
# at most 2 triggered insertions (FlashMem and the soft prompt: monitor, gap 24; MemGen: delimiters, budget 2).
TRAIN=(--data gsm8k --limit 864 --targets self --self-samples 1 --self-temperature 0 --self-max-new-tokens 512
       --self-batch-size 48
       --self-targets-file $R/self_targets.jsonl --max-length 768 --on-bad-data skip --steps 100 --batch-size 4
       --eval-every 25 --save-every 5 --seed 0)
done_() { python3 results/done.py "$1"; }  # finished: its checkpoint, or a committed log, says so
resume() { [ -f "$1/checkpoint/manifest.json" ] && echo --resume || true; }
train() {  # train NAME METHOD LR [extra flags]; the finished weights rounded to bfloat16 (see to_bf16.py)
  local d=$R/memories/$1; shift
  done_ "$d" || flashmem train "${MODEL[@]}" "${TRAIN[@]}" --method "$1" --lr "$2" --out "$d" "${@:3}" $(resume "$d")
  python3 results/to_bf16.py "$d"
}
# Batch 48: decoding here is bound by reading the weights, so more rows per step cost little (measured on
# 2026-11-27, one thread: 16 rows 0.60 s a step, 32 rows 0.94 s, 48 rows 1.21 s). The first 33 vanilla
# records were made at batch 16.
DECODE=(--split test --max-new-tokens 512 --batch-size 48 --no-nll)  # every evaluation, GSM8K and MAWPS
EVAL=(--data gsm8k "${DECODE[@]}")
# The paper's recipe (issue 35), as MemGen trains and the FlashMem paper follows it: MemGen's prompt (its
# instruction and question frame, --prompt memgen) and its SFT targets (GSM8K's rationales with the calculator
# marks, then \boxed{answer}: --targets memgen); the same 864 training rows, 100 steps of 4 and K=8 as above.
PAPER=(--model qwen2.5-coder-0.5b --threads $THREADS --prompt memgen --data gsm8k --limit 864 --targets memgen
       --max-length 768 --on-bad-data skip --steps 100 --batch-size 4 --eval-every 25 --save-every 5 --seed 0)
paper() {  # paper NAME METHOD LR [extra flags]
  local d=$R/memories/$1; shift
  done_ "$d" || flashmem train "${PAPER[@]}" --method "$1" --lr "$2" --out "$d" "${@:3}" $(resume "$d")
  python3 results/to_bf16.py "$d"
}
case "$1" in
  paper-flashmem)   paper paper_flashmem flashmem 3e-4 ;;
  paper-softprompt) paper paper_softprompt softprompt "$(python3 results/best_lr.py $R/memories)" ;;  # its tuned rate
  paper-memgen)     paper paper_memgen memgen 3e-4 --budget 2 ;;
  eval-paper)  # the first 500 test questions with MemGen's prompt: the plain model (the first of issue 35's two
    # plain baselines; the other is gsm8k_vanilla, the boxed prompt) and every trained paper-recipe memory
    M=$R/memories; E=$R/eval; ALSO=()
    for pair in paper_flashmem:flashmem paper_softprompt:softprompt paper_memgen:memgen; do
      run=${pair%%:*}; done_ $M/$run && ALSO+=("--method ${pair##*:} --memory $M/$run --out $E/gsm8k_$run.json")
    done
    done_ $M/paper_flashmem && ALSO+=("--method flashmem --memory $M/paper_flashmem --ablate foreign-context --out $E/gsm8k_paper_flashmem_foreign-context.json")
    [ ${#ALSO[@]} -gt 0 ] && ALSO=(--also "${ALSO[@]}")
    flashmem eval --model qwen2.5-coder-0.5b --threads $THREADS --prompt memgen "${EVAL[@]}" --limit 500 \
      --method vanilla --out $E/gsm8k_paper_vanilla.json "${ALSO[@]}" ;;
  vanilla)   flashmem eval "${MODEL[@]}" "${EVAL[@]}" --method vanilla --out $R/eval/gsm8k_vanilla.json ;;
  flashmem)  train flashmem flashmem 3e-4 ;;
  softprompt-sweep)  # 30 steps per rate, as on SmolLM2 (LRS picks rates, so two lanes can split the sweep)
    for lr in ${LRS:-1e-3 1e-2 1e-1 3e-1}; do train sweep_softprompt_lr$lr softprompt $lr --steps 30 --eval-every 30; done ;;
  softprompt) train softprompt softprompt "$(python3 results/best_lr.py $R/memories)" ;;
  memgen)    train memgen memgen 3e-4 --budget 2 ;;
  flashmem-sampled)  # targets greedy decoding misses (the greedy ones are all its argmax already,
    # benchmarks/heldout_plain.py): questions solved greedily keep that solution, the others get 4 samples at
    # temperature 0.7, kept when correct (collected first into their own file, resumable), then the same training
    train flashmem_sampled flashmem 3e-4 --self-samples 4 --self-temperature 0.7 \
      --self-targets-file $R/self_targets_sampled.jsonl --self-reuse $R/self_targets.jsonl ;;
  collect-0|collect-1)  # flashmem-sampled's collection split over both cores: shard 0 or 1 of 2, then `merge`
    python3 results/qwen/collect_shards.py sample "${1#collect-}" 2 ;;
  merge) python3 results/qwen/collect_shards.py merge ;;
  eval-flashmem)  # the full test set (records resume: after eval-pass it adds items 501-1,319)
    flashmem eval "${MODEL[@]}" "${EVAL[@]}" --method flashmem --memory $R/memories/flashmem --out $R/eval/gsm8k_flashmem.json ;;
  eval-pass)  # the first 500 test questions: FlashMem, its two context ablations, the soft prompt and (once
    # trained) MemGen in one pass (`--also`: each batch's prompts encoded once)
    M=$R/memories; E=$R/eval
    ALSO=("--method flashmem --memory $M/flashmem --ablate foreign-context --out $E/gsm8k_flashmem_foreign-context.json"
          "--method flashmem --memory $M/flashmem --ablate mean-latents --out $E/gsm8k_flashmem_mean-latents.json")
    done_ $M/softprompt && ALSO+=("--method softprompt --memory $M/softprompt --out $E/gsm8k_softprompt.json")
    done_ $M/memgen && ALSO+=("--method memgen --memory $M/memgen --out $E/gsm8k_memgen.json")
    done_ $M/flashmem_sampled && ALSO+=("--method flashmem --memory $M/flashmem_sampled --out $E/gsm8k_flashmem_sampled.json")
    flashmem eval "${MODEL[@]}" "${EVAL[@]}" --limit 500 --method flashmem --memory $M/flashmem \
      --out $E/gsm8k_flashmem.json --also "${ALSO[@]}" ;;
  bf16-check)  # rounding to bfloat16 moves nothing: the first 48 test questions again, with the float32 weights
    # (the last checkpoint's; copied beside the config into a folder git ignores)
    F=$R/memories/flashmem_fp32; mkdir -p $F
    cp $R/memories/flashmem/memory_config.json $R/memories/flashmem/checkpoint/memory.safetensors $F/
    flashmem eval "${MODEL[@]}" "${EVAL[@]}" --limit 48 --method flashmem --memory $F --out $R/eval/gsm8k_flashmem_fp32.json ;;
  mawps)  # transfer: the first 500 MAWPS test problems, the GSM8K-trained memory against the plain model
    flashmem eval "${MODEL[@]}" --data mawps "${DECODE[@]}" --limit 500 \
      --method vanilla --out $R/eval/mawps_vanilla.json \
      --also "--method flashmem --memory $R/memories/flashmem --out $R/eval/mawps_flashmem.json" ;;
  bench)  # issue 12's speed table on the CPU, as for SmolLM2 (results/bench/run.sh): 1k with MemGen, 4k
    # without (a MemGen run would re-encode 4k tokens 8 times on one thread); the paper schedule, 256 new
    # tokens, 3 repeats, the trained FlashMem memory
    for ctx in 1024 4096; do
      methods=vanilla,flashmem; [ $ctx = 1024 ] && methods=vanilla,flashmem,memgen
      flashmem bench --model qwen2.5-coder-0.5b --threads $THREADS --memory $R/memories/flashmem --methods $methods \
        --contexts $ctx --schedules paper --new-tokens 256 --repeats 3 --no-memory-workers --out $R/bench_cpu_$ctx.json
    done ;;
  *) echo "unknown stage $1"; exit 2 ;;
esac
