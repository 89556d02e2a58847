#!/usr/bin/env bash
# Train the heads on one GPU from a cache: no encoder runs, only cached tensors stream in.
# Library defaults: trainer/configs/*.json and each head's Config (tflocal: about 0.8M parameters at
# ViT-B-32 widths). A training set whose cached rows fit resident_mb (4,096 MB) is read once and kept
# on the GPU; a larger one streams in windows (raise resident_mb in --config to keep it resident).
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
