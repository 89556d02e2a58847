"""Trainer streaming benchmark, side by side in one run: Zarr chunks decoded and time per epoch for the
loader's block shuffle (items grouped by chunk, shuffled within windows) versus a plain random
permutation read through the same windows (what a random sampler does). Writes loader_bench.json
and loader_bench.md."""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from results import publish

from cache_schemas import open_store
from pipeline.cluster import ClusterConfig
from pipeline.encoders import EncoderRequest
from pipeline.extract import ExtractOptions, extract
from trainer.data import BatchLoader, Examples
from workflows.examples import write_sugarcrepe_example

NEEDS = frozenset({"image.patches", "text.tokens"})


class _PermutationLoader(BatchLoader):
    """The same loader and windows, but items in a plain random order: no chunk grouping."""

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        usable = len(order) - len(order) % self.batch_size
        return [order[i:i + self.batch_size] for i in range(0, usable, self.batch_size)]


def one_epoch(loader: BatchLoader) -> dict[str, float]:
    start = time.perf_counter()
    batches = 0
    for batch in loader:
        if batch.epoch > 0:
            break
        batches += 1
    return {"batches": batches, "seconds": time.perf_counter() - start,
            "image_chunk_reads": loader.chunk_reads["image_patches"],
            "text_chunk_reads": loader.chunk_reads["text_tokens"],
            "max_window_mb": loader.max_window_bytes / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--buffer", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        annotations, images = write_sugarcrepe_example(workdir, sizes={"swap_att": args.items}, n_images=args.items,
                                                       image_size=32)
        store_path = os.path.join(workdir, "store")
        extract(annotations, "sugarcrepe", "bench", EncoderRequest("vlcache-tiny"), store_path, images_root=images,
                cluster=ClusterConfig(), options=ExtractOptions(rows_per_shard=1024, progress=False))
        store = open_store(store_path)
        space = store.space("vlcache-tiny")
        examples = Examples.from_dataset(space, store.dataset("bench"))
        results = {}
        for name, cls in (("block shuffle", BatchLoader), ("random permutation", _PermutationLoader)):
            loader = cls(space, examples, NEEDS, batch_size=64, shuffle_buffer=args.buffer, prefetch=0)
            results[name] = one_epoch(loader)
    ours, plain = results["block shuffle"], results["random permutation"]
    results["ratios"] = {
        "image_chunk_reads (permutation / ours)": plain["image_chunk_reads"] / ours["image_chunk_reads"],
        "epoch_seconds (permutation / ours)": plain["seconds"] / ours["seconds"],
    }
    lines = ["| loader | batches | image chunk reads | text chunk reads | epoch s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {r['batches']} | {r['image_chunk_reads']} | {r['text_chunk_reads']} | {r['seconds']:.2f} |"
              for n, r in results.items() if n != "ratios"]
    lines += ["", *(f"- {k}: {v:.1f}x" for k, v in results["ratios"].items())]
    publish(args.out, "loader_bench", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
