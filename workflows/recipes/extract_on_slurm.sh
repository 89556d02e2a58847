#!/usr/bin/env bash
# Batch-extract a dataset on a SLURM cluster: JOBS jobs, each one Dask worker with one encoder; the
# driver (this command) runs where you start it and submits, watches and replaces the jobs.
# The store must be on storage every job can reach (a shared filesystem, or s3://...).
# A job that is cancelled, preempted or past its walltime costs only the shards it held: another job
# takes its place (--slurm-replacements). Rerunning the same command after the driver itself stops
# (a crash, Ctrl-C, its own walltime) encodes only unfinished shards.
set -euo pipefail
export DASK_CONFIG="${DASK_CONFIG:-$(dirname "$0")}"   # reads jobqueue.yaml beside this script
SOURCE=${SOURCE:?path of the source, e.g. /data/coco/annotations/captions_train2017.json}
IMAGES=${IMAGES:?folder of the images, e.g. /data/coco/train2017}
FORMAT=${FORMAT:-coco}
DATASET=${DATASET:-coco-train}
STORE=${STORE:-/shared/caches/main}
JOBS=${JOBS:-8}
MODEL=${MODEL:-ViT-B-32}
PRETRAINED=${PRETRAINED-openai}        # empty: random weights (seeded), as the tests run it
DEVICE=${DEVICE:-cuda}                 # cpu on a CPU partition

vlcache extract "$SOURCE" --format "$FORMAT" --images-root "$IMAGES" --dataset "$DATASET" \
    --model "$MODEL" ${PRETRAINED:+--pretrained "$PRETRAINED"} --tokens patches,cls,values --projected \
    --store "$STORE" --slurm-jobs "$JOBS" --device "$DEVICE" --batch-size 256 --quiet
vlcache cache verify "$STORE"
