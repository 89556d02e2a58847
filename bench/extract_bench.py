"""Extraction benchmarks, measured side by side in one run (ratios; absolute CPU times are not reported
as results). Prints a table and writes extract_bench.json and extract_bench.md under --out.

1. Causal text trimming: ViT-B-32's text tower on real-length captions, trimmed vs padded to 77.
2. Ragged token storage: bytes of text_tokens vs the same texts padded to the context length.
3. Dedup: rows encoded for a SugarCrepe-format set (7,511 items) vs one encoder pass per item."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import pyarrow.compute as pc
import torch
from results import publish

from cache_schemas import open_store
from pipeline.cluster import ClusterConfig
from pipeline.encoders import EncoderRequest, describe, load_encoder
from pipeline.extract import ExtractOptions, extract
from workflows.examples import SUGARCREPE_SIZES, write_sugarcrepe_example

CAPTIONS = [  # COCO-like lengths (10-20 tokens)
    "a man riding a wave on top of a surfboard",
    "two dogs playing with a red frisbee in a grassy park",
    "a plate of food with broccoli, rice and a piece of grilled chicken",
    "a red double decker bus driving down a city street next to tall buildings",
]


def text_trimming(n: int, repeats: int) -> dict:
    causal = load_encoder(describe(EncoderRequest("ViT-B-32")))
    padded = load_encoder(dataclasses.replace(causal.space, text_trim="none"))
    padded.model = causal.model  # the same weights: only the trimming differs
    ids, lengths = causal.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(n)])
    timings = {}
    for name, encoder in (("padded", padded), ("trimmed", causal)):
        encoder.encode_texts(ids[:8], lengths[:8])  # warm-up
        timings[name] = min(_timed(encoder.encode_texts, ids, lengths) for _ in range(repeats))
    return {"captions": n, "mean_tokens": float(lengths.mean()), "context": int(ids.shape[1]),
            "speedup_trimmed_vs_padded": timings["padded"] / timings["trimmed"]}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def storage_and_dedup(workdir: str) -> dict:
    annotations, images = write_sugarcrepe_example(workdir, sizes=SUGARCREPE_SIZES, n_images=1500, image_size=48)
    store = os.path.join(workdir, "store")
    summary = extract(annotations, "sugarcrepe", "sugarcrepe", EncoderRequest("vlcache-tiny"), store,
                      images_root=images, cluster=ClusterConfig(),
                      options=ExtractOptions(rows_per_shard=1024, progress=False))
    space = open_store(store).space("vlcache-tiny")
    texts = space.texts()
    real = int(pc.sum(texts["n_tokens"]).as_py())
    padded_bytes = texts.num_rows * space.spec.context_length * space.spec.text_token_dim * 2
    stored = space.nbytes_stored()["text_tokens"]
    return {
        "items": summary.items,
        "encoder_rows_per_item_pass": 3 * summary.items,  # image + caption + negative for every item
        "encoder_rows_dedup": summary.images_encoded + summary.texts_encoded,
        "dedup_saving": 3 * summary.items / (summary.images_encoded + summary.texts_encoded),
        "text_tokens_real": real,
        "text_tokens_bytes_stored": stored,
        "text_tokens_bytes_if_padded": padded_bytes,
        "padded_vs_stored": padded_bytes / stored,
        "stored_vs_real_fp16": stored / (real * space.spec.text_token_dim * 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--captions", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as workdir:
        results = {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(),
                   "text_trimming": text_trimming(args.captions, args.repeats),
                   "storage_and_dedup": storage_and_dedup(workdir)}
    lines = ["| measure | value |", "|---|---:|"]
    for group in ("text_trimming", "storage_and_dedup"):
        lines += [f"| {group}.{k} | {v:.3g} |" if isinstance(v, float) else f"| {group}.{k} | {v} |"
                  for k, v in results[group].items()]
    publish(args.out, "extract_bench", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
