#!/usr/bin/env bash
# Share a cache between experiments and people: one store, many datasets and encoders.
# Every unique image and caption is encoded once per encoder spec; an experiment that asks for the
# same encoder (model, weights, preprocessing, layer, tokens) finds the same space and encodes nothing.
set -euo pipefail
STORE=${STORE:-s3://team-bucket/vlcache/main}     # or a path on a shared filesystem

# Person A caches SugarCrepe; person B later adds COCO: shared images are not encoded again.
vlcache extract data/sugarcrepe --format sugarcrepe --images-root data/coco/val2017 \
    --dataset sugarcrepe --model ViT-B-32 --pretrained openai --store "$STORE"
vlcache extract data/coco/annotations/captions_val2017.json --format coco --images-root data/coco/val2017 \
    --dataset coco-val --model ViT-B-32 --pretrained openai --store "$STORE"

vlcache cache info "$STORE"         # which datasets each space covers, unique counts, bytes
vlcache cache verify "$STORE"       # checksums of every committed shard
# Any experiment then reads it without an encoder:  cache_schemas.open_store("$STORE")
