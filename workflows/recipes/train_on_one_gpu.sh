#!/usr/bin/env bash
# Train the heads on one GPU from a cache: no encoder runs, only cached tensors stream in.
# The library defaults (trainer/configs/*.json) are sized for a GPU: tflocal ~11M parameters.
set -euo pipefail
STORE=${STORE:-caches/main}
TRAIN=${TRAIN:-coco-train}
EVAL=${EVAL:-sugarcrepe}
OUT=${OUT:-runs/gpu}

for head in maxsim global-mlp tflocal; do
    vlcache train --store "$STORE" --dataset "$TRAIN" --head "$head" --out "$OUT/$head" \
        --eval-dataset "$EVAL" --device cuda     # add --resume to continue a run
done
vlcache eval --store "$STORE" --dataset "$EVAL" --head global --out "$OUT/global"
for head in maxsim global-mlp tflocal; do
    vlcache eval --store "$STORE" --dataset "$EVAL" --head "$head" --checkpoint "$OUT/$head" --out "$OUT/$head/report"
done
