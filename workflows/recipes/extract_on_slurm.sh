#!/usr/bin/env bash
# Batch-extract a dataset on a SLURM cluster: N GPU jobs, each one Dask worker with one encoder.
# The store must be on storage every job can reach (a shared filesystem, or s3://...).
# Rerunning the same command after a crash, a preemption or Ctrl-C encodes only unfinished shards.
set -euo pipefail
export DASK_CONFIG="$(dirname "$0")"          # reads jobqueue.yaml beside this script
SOURCE=${SOURCE:?path of the source, e.g. /data/coco/annotations/captions_train2017.json}
IMAGES=${IMAGES:?folder of the images, e.g. /data/coco/train2017}
STORE=${STORE:-/shared/caches/main}
JOBS=${JOBS:-8}

vlcache extract "$SOURCE" --format coco --images-root "$IMAGES" --dataset coco-train \
    --model ViT-B-32 --pretrained openai --tokens patches,cls,values --projected \
    --store "$STORE" --slurm-jobs "$JOBS" --device cuda --batch-size 256
vlcache cache verify "$STORE"
