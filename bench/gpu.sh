#!/usr/bin/env bash
# The GPU figures of bench/README.md in one run, on a machine with one CUDA GPU:
#     OUT=runs/bench-gpu bash bench/gpu.sh
# Each step writes its JSON and Markdown under $OUT as it finishes; a failed step does not stop the others.
# SIZES_B32, SIZES_L14 (two set sizes, unique images), DECODE_IMAGES, LOADER_ITEMS and LOADER_BUFFER shrink it for a dry run
# on a CPU; L14=0 and HEADS=0 skip the ViT-L-14 extraction and the head steps. Extraction runs with its
# defaults on a GPU (decode processes, two worker threads) and, beside them, as a CPU runs it (decode
# threads, one worker thread). On an H200 the ViT-B-32 step took 3 minutes (2026-11-26); the loader step is
# cut at 4; with ViT-L-14 the whole run outlasts a 15-minute lease, so run it on its own (L14=0 first).
set -u
OUT=${OUT:-runs/bench-gpu}
DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$(dirname "$0")"
step() { echo "== $*"; local t=$SECONDS; "$@" || echo "FAILED: $*"; echo "   ($((SECONDS - t)) s)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, pyarrow, zarr, open_clip; print(torch.__version__, pyarrow.__version__, zarr.__version__, open_clip.__version__)"
step python3 extract_speed_bench.py --device "$DEVICE" --model ViT-B-32 --images ${SIZES_B32:-2048 8192} \
    --image-size 320 --batch-size 256 --repeats 1 --no-per-row --model-only ${MODEL_ONLY_B32:-40} \
    --also "--decode-processes 0 --threads 1" --work /tmp/vlcache-bench-work --out "$OUT"
[ "${L14:-1}" != 0 ] && step python3 extract_speed_bench.py --device "$DEVICE" --model ViT-L-14 \
    --images ${SIZES_L14:-1024 4096} --image-size 320 --batch-size 256 --repeats 1 --no-per-row \
    --model-only ${MODEL_ONLY_L14:-10} --work /tmp/vlcache-bench-work --out "$OUT"
step python3 decode_bench.py --images ${DECODE_IMAGES:-2048} --work /tmp/vlcache-bench-work --out "$OUT"
[ "${HEADS:-1}" != 0 ] && step python3 head_speed_bench.py --device "$DEVICE" --repeats 3 --out "$OUT"
step python3 loader_bench.py --model ViT-B-32 --items 6000 --image-size 64 --device "$DEVICE" \
    --train-device "$DEVICE" --resident-only --out "$OUT"
step timeout 240 python3 loader_bench.py --model ViT-B-32 --items ${LOADER_ITEMS:-16000} --image-size 64 \
    --buffer ${LOADER_BUFFER:-2048} --device "$DEVICE" --out "$OUT"
