#!/usr/bin/env bash
# Issue 32, the gist objective (--gist-weight: latent j's token distribution under the frozen LM head named
# toward token j of the document's keys and values) on SmolLM2-135M. Resumable: rerun the same stage.
#   STOP=N bash results/eviction/gist.sh STAGE     (evaluate with run.sh eval-RUN / eval-nll-RUN)
set -euo pipefail
source "$(dirname "$0")/common.sh"
case "$1" in
  train-one128-gist)  # one128_soft (answer NLL, soft-token readout) plus the gist, weight 1. Steps 1-300 ran at
    # commit 209e7bb, where the gist was tokenised without a leading space (its first target "green", not the
    # document's " green"); steps 301-392 resumed with the leading space (the colour's target changed mid-run)
    train one128_gist "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token --gist-weight 1 ;;
  train-one128-gistonly)  # the writer alone: gist cross-entropy only (--sft-weight 0: no answer decoded, about half
    # a step's cost; the projection gets no gradient, so each latent is exactly its expected token embedding)
    train one128_gistonly "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token \
      --gist-weight 1 --sft-weight 0 ;;
  train-one128-gistonly-l2)  # the same with a two-layer consolidator (--num-layers 2: copies of the last two layers,
    # each reading its own layer's cache), the paper's Table 4 axis: does copying need more than one layer?
    train one128_gistonly_l2 "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token \
      --gist-weight 1 --sft-weight 0 --num-layers 2 ;;
  train-one128-gistonly-d4)  # one128_gistonly with the value's digits weighted 4x in the gist term
    # (--gist-digit-weight 4): the colour and the object were copied within 300 steps, the digits not
    train one128_gistonly_d4 "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token \
      --gist-weight 1 --sft-weight 0 --gist-digit-weight 4 ;;
  train-one128-gistonly-sq)  # one128_gistonly with a learned input per latent step (--step-queries): its latents
    # found the colour and the object by attention but spread over the filler where the digits are
    train one128_gistonly_sq "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token \
      --gist-weight 1 --sft-weight 0 --step-queries ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
