"""Decoding alone, as extraction's worker runs it where a GPU encodes, side by side in one run over the
same JPEGs: images/s, and the worker's own CPU per image (its threads' time, which the thread
launching the GPU's kernels competes with), for decode threads and for decode processes at several
images per task. No encoder runs: on a GPU host's cores this is the ceiling decoding puts on
extraction. Writes decode_bench.json and decode_bench.md.

    python bench/decode_bench.py [--images 2048] [--processes N] [--work DIR]"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from extract_speed_bench import workload
from results import publish

from pipeline.decoding import _task_size, close_process_pools, load, process_decoder, thread_decoder, usable_cores
from pipeline.preprocess import ImageSteps
from pipeline.shards import Stages, _prefetched

STEPS = ImageSteps((224, 224), "shortest")  # ViT-B-32's eval steps
BATCH = 256


def decode_all(decode, rows: pa.Table) -> dict[str, float]:
    """Every image through the worker's decode path, a batch ahead, as an image shard reads them."""
    wall, cpu = time.perf_counter(), time.process_time()
    decoded = sum(len(pixels) for _, pixels in _prefetched(decode, rows, BATCH, Stages()))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images_per_s": decoded / wall, "worker_cpu_us_per_image": cpu / decoded * 1e6}


def one_core(rows: pa.Table) -> float:
    """Images/s of the whole per-image path (read, check, decode, steps) in this thread alone."""
    start = time.perf_counter()
    for uri, expected in zip(rows["uri"].to_pylist()[:200], rows["hash"].to_pylist()[:200]):
        load(STEPS, 224, uri, expected)
    return min(200, rows.num_rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--images", type=int, default=2048, help="unique images")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--processes", type=int, default=max(2, usable_cores() - 2),
                        help="decode processes (extraction's default on a GPU host: its cores but two)")
    parser.add_argument("--per-task", type=int, nargs="+", default=[1, 32],
                        help="images per process task, besides extraction's own choice")
    parser.add_argument("--repeats", type=int, default=3, help="best of N")
    parser.add_argument("--work", help="a folder to keep the JPEGs in and reuse (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.work or scratch
        work = workload(os.path.join(root, f"n{args.images}-{args.image_size}px"), args.images, args.image_size)
        with open(os.path.join(work["root"], "images.txt")) as f:
            uris = f.read().split("\n")
        hashes = [hashlib.sha256(Path(uri).read_bytes()).hexdigest() for uri in uris]
        rows = pa.table({"uri": uris, "hash": hashes})
        methods = {"threads": lambda: thread_decoder(STEPS, 224)}
        for n in [None, *args.per_task]:  # None: as extraction sizes its tasks
            size = n or _task_size(BATCH, args.processes)
            label = f"{size} image{'s' * (size > 1)} a task" + ("" if n else " (the default)")
            methods[f"{args.processes} processes, {label}"] = (
                lambda n=n: process_decoder("bench", args.processes, STEPS, 224, images_per_task=n))
        results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores ({usable_cores()} usable)",
                   "images": len(uris), "image_size": args.image_size, "one core, images/s": one_core(rows)}
        try:
            for name, decoder in methods.items():
                decode_all(decoder(), rows.slice(0, BATCH))  # warm: pools started, files in the page cache
                runs = [decode_all(decoder(), rows) for _ in range(args.repeats)]
                results[name] = max(runs, key=lambda r: r["images_per_s"])
        finally:
            close_process_pools()
    lines = [f"Machine: {results['machine']}; {results['images']} JPEGs of {args.image_size} px to 224 x 224, "
             f"batches of {BATCH}, best of {args.repeats}. One core alone: {results['one core, images/s']:.0f} "
             "images/s.", "", "| decoding | images/s | worker CPU per image |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['images_per_s']:.0f} | {r['worker_cpu_us_per_image']:.0f} us |"
              for name, r in results.items() if isinstance(r, dict)]
    publish(args.out, "decode_bench", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
