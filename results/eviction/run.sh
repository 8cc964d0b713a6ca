#!/usr/bin/env bash
# Issue 32 (a memory that survives eviction) on SmolLM2-135M, this 2-core CPU, one torch thread a job.
# Resumable: rerun the same stage; finished points/steps are kept.
#   bash results/eviction/run.sh capacity-128|capacity-128-norm|capacity-512
#   bash results/eviction/run.sh train-RUN | eval-RUN | eval-nll-RUN | eval-fit-RUN | eval-plain-128[f1] | presses-c512-k8
# Training runs are compared at equal steps: each stops at step STOP (default 500) of its 2,000-step schedule
# (--stop-at), and STOP=N resumes it further on the same schedule; evaluations name the step (RUN_sSTEP; the
# records without a step are qa128_mix's at step 453, stopped by the end of session 16).
set -euo pipefail
source "$(dirname "$0")/common.sh"
# A memory is evaluated on the setting it was trained on (its train_config.json), in eval/c128 for 4 facts at 128
# tokens and eval/cCONTEXTfFACTS otherwise.
setting() {  # setting RUN: sets DATA and OUT
  DATA=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"])' $E/memories/$1/train_config.json)
  OUT=$(python3 -c 'import sys; kv = dict(p.split("=") for p in sys.argv[1].split(":")[1].split(","))
print("c128" if kv == {"context": "128", "facts": "4"} else "c%sf%s" % (kv["context"], kv["facts"]))' "$DATA")
  OUT=$E/eval/$OUT; mkdir -p $OUT
}
EVAL128=(--threads 1 --split test --limit ${LIMIT:-200} --batch-size 8 --max-new-tokens 24 --no-nll)
case "$1" in
  train-qa128-mix)  # flashmem's consolidator (K=8, L=1), answer NLL + KL to the full view (0.5) + reconstruction
    # of the evicted document (digits x4)
    train qa128_mix "${STREAM128[@]}" --method flashmem --lr 1e-3 --steps 2000 \
      --kl-weight 0.5 --recon-weight 1 --recon-digit-weight 4 ;;
  train-qa128-sft)  # the paper's objective alone (answer NLL), same data, memory and steps: what the extra signals add
    train qa128_sft "${STREAM128[@]}" --method flashmem --lr 1e-3 --steps 2000 ;;
  train-qa128-write)  # the mix with write capacity at every layer: a rank-8 LoRA on every layer's K/V projections,
    # on only while the latents are written (--write-lora-r)
    train qa128_write "${STREAM128[@]}" --method flashmem --lr 1e-3 --steps 2000 --write-lora-r 8 \
      --kl-weight 0.5 --recon-weight 1 --recon-digit-weight 4 ;;
  train-aware128-sft)  # the paper's own setting through the cut: memory made after the question (query-aware), answer NLL
    train aware128_sft "${CUT128[@]}" --stop-at ${STOP:-500} --method flashmem --lr 1e-3 --steps 2000 ;;
  train-fit128-sft)  # the limit check: the same recipe as qa128_sft on 8 documents repeated (--fit-documents), one a
    # step, each asked its 4 facts: can the consolidator carry these documents through the cut at all?
    train fit128_sft "${STREAM128[@]}" --fit-documents 8 --method flashmem --lr 1e-3 --steps 2000 ;;
  train-fit128x64-sft)  # the limit check at 64 documents: where memorising gives way to a general copy, if it does
    train fit128x64_sft "${STREAM128[@]}" --fit-documents 64 --method flashmem --lr 1e-3 --steps 2000 ;;
  train-one128-sft)  # the floor of the task: one fact a document (no key to bind, 4 digits to copy), 4 documents a
    # step, the paper's objective; if this carries nothing, the consolidator cannot learn to copy at all here
    train one128_sft "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 ;;
  train-one128-soft)  # one128_sft with the soft-token readout (--readout soft-token): each latent the frozen LM
    # head's expected token embedding plus the projection, so a copied digit is a token the model already reads
    train one128_soft "${ONE128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token ;;
  train-aware128-soft)  # aware128_sft with the soft-token readout
    train aware128_soft "${CUT128[@]}" --stop-at ${STOP:-500} --method flashmem --lr 1e-3 --steps 2000 \
      --readout soft-token ;;
  train-qa128-soft)  # qa128_sft (4 facts, query-agnostic) with the soft-token readout
    train qa128_soft "${STREAM128[@]}" --method flashmem --lr 1e-3 --steps 2000 --readout soft-token ;;
  eval-fit-*)  # eval-fit-RUN: a fit check's memory on its own N training documents (their needles; N its
    # --fit-documents), own memory and another of the N documents', answers and their likelihood
    run=${1#eval-fit-}; at=${run}_s${STOP:-500}; setting $run
    n=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["fit_documents"])' $E/memories/$run/train_config.json)
    $FM eval --threads 1 --data $DATA --split train --limit $n --batch-size 8 --max-new-tokens 24 \
      --method flashmem --memory $E/memories/$run \
      --out $OUT/fit_$at.json --also "--ablate foreign-context --out $OUT/fit_${at}_foreign-context.json" ;;
  eval-plain-128)  # the plain model through the cut (floor) and with the whole document (ceiling)
    $FM eval "${EVAL128[@]}" --data recall:context=128,facts=4 --method vanilla --prompt-window $W128 \
      --out $E/eval/c128/vanilla_cut.json --also "--prompt-window 0 --out $E/eval/c128/vanilla_whole.json" ;;
  eval-plain-128f1)  # the same for one fact a document
    mkdir -p $E/eval/c128f1
    $FM eval "${EVAL128[@]}" --data recall:context=128,facts=1 --method vanilla --prompt-window $W128 \
      --out $E/eval/c128f1/vanilla_cut.json --also "--prompt-window 0 --out $E/eval/c128f1/vanilla_whole.json" ;;
  eval-nll-*)  # eval-nll-RUN: the answers' likelihood through the cut, own memory and another document's, paired
    run=${1#eval-nll-}; at=${run}_s${STOP:-500}; setting $run
    $FM eval "${EVAL128[@]/--no-nll/--nll-only}" --data $DATA --method flashmem --memory $E/memories/$run \
      --out $OUT/nll_$at.json --also "--ablate foreign-context --out $OUT/nll_${at}_foreign-context.json" ;;
  eval-*)  # eval-RUN: a trained memory through the cut on its own setting, with its foreign-context ablation
    run=${1#eval-}; at=${run}_s${STOP:-500}; setting $run
    $FM eval "${EVAL128[@]}" --data $DATA --method flashmem --memory $E/memories/$run --out $OUT/$at.json \
      --also "--ablate foreign-context --out $OUT/${at}_foreign-context.json" ;;
  capacity-128)  # 4 facts in ~130-token documents: every K on both paths, two documents
    $PY benchmarks/capacity.py --setting context=128,facts=4 --docs 2 --ks 0,1,2,4,8,16,32 --paths kv,embed \
      --steps 300 --check-every 50 --out $E/capacity_c128_f4.jsonl --threads 1 ;;
  capacity-128-norm)  # the embed path with every vector on the token-embedding norm, as flashmem's latents are
    $PY benchmarks/capacity.py --setting context=128,facts=4 --docs 1 --ks 1,2,4,8,16,32 --paths embed --embed-norm \
      --steps 300 --check-every 50 --out $E/capacity_c128_f4.jsonl --threads 1 ;;
  capacity-512)  # 16 facts in ~520-token documents: 4 random questions a step, one document
    $PY benchmarks/capacity.py --setting context=512,facts=16 --docs 1 --ks 0,1,4,16,32 --paths embed,kv \
      --steps 400 --check-every 100 --facts-per-step 4 --out $E/capacity_c512_f16.jsonl --threads 1 ;;
  presses-c512-k8)  # issue 33's headline setting: every kvpress press, query-agnostic, 8 kept entries per layer,
    # 512-token documents with 16 facts, the first LIMIT (200) test items; paired with flashmem's runs on the
    # same items (results/recall/eval/cut_c512: the plain cut and the whole document)
    for press in streaming knorm expected_attention kvzip snapkv; do
      results/kvpress/.venv/bin/python results/kvpress/run_press.py --press $press --kept 8 --mode agnostic \
        --data recall:context=512,facts=16 --split test --limit ${LIMIT:-200} --out $E/eval/c512/press_${press}_k8.json
    done ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
