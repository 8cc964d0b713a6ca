#!/usr/bin/env bash
# Run 3 (issue 11) evaluations on the first 200 GSM8K test questions with the memories of train.sh.
# NLL of the reference answers (--nll-only) for every method and ablation; free decoding for FlashMem
# (raw and length-normalised entropy) to see where the monitor fires. Resumable: rerun the same line.
#   bash results/run3/eval.sh nll-flashmem|nll-memgen|nll-memgen-ablations|nll-softprompt|nll-norm|decode
set -euo pipefail
# Named data sets (gsm8k, mawps) come from $FLASHMEM_DATA_DIR; by default this repository's development
# folder beside the checkout (flashmem itself never guesses one).
export FLASHMEM_DATA_DIR="${FLASHMEM_DATA_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data}"
export OMP_NUM_THREADS=1
M=results/run3/memories
E=results/run3/eval
COMMON=(--threads 1 --data gsm8k --split test --limit 200)
case "$1" in
  nll-flashmem)  # vanilla, FlashMem, its prompt-end-only policy and both context ablations
    flashmem eval "${COMMON[@]}" --nll-only --method vanilla --out $E/nll_vanilla.json
    flashmem eval "${COMMON[@]}" --nll-only --method flashmem --memory $M/flashmem --out $E/nll_flashmem.json
    flashmem eval "${COMMON[@]}" --nll-only --method flashmem --memory $M/flashmem --prompt-memory-only --out $E/nll_flashmem_promptonly.json
    for a in foreign-context mean-latents; do
      flashmem eval "${COMMON[@]}" --nll-only --method flashmem --memory $M/flashmem --ablate $a --out $E/nll_flashmem_$a.json
    done ;;
  nll-memgen)
    flashmem eval "${COMMON[@]}" --nll-only --method memgen --memory $M/memgen --out $E/nll_memgen.json ;;
  nll-memgen-ablations)
    for a in foreign-context mean-latents; do
      flashmem eval "${COMMON[@]}" --nll-only --method memgen --memory $M/memgen --ablate $a --out $E/nll_memgen_$a.json
    done ;;
  nll-softprompt)
    flashmem eval "${COMMON[@]}" --nll-only --method softprompt --memory $M/softprompt --out $E/nll_softprompt.json ;;
  nll-norm)
    flashmem eval "${COMMON[@]}" --nll-only --method flashmem --memory $M/flashmem_norm --out $E/nll_flashmem_norm.json ;;
  decode)
    flashmem eval "${COMMON[@]}" --method vanilla --no-nll --out $E/gsm8k_vanilla.json
    for m in flashmem flashmem_norm; do
      flashmem eval "${COMMON[@]}" --method flashmem --memory $M/$m --no-nll --out $E/gsm8k_$m.json
    done ;;
esac
