"""Zarr's own crc32c codec on every chunk, against the read check the store already makes, side by side in
one run: stores holding the same rows at ViT-B-32 widths (image patches 50 x 768, text tokens 768,
globals 512; float16), written through the project's writer path (plans, whole shards, commit records),
whose arrays differ only in their chunks' codecs: zstd level 1 alone (spaces before schema 1.5), zstd
then crc32c (1.5: zarr checks each chunk's checksum as it decodes it), and zstd with its own frame
checksum (the alternative, not used). For each:
- an epoch's read, as a trainer reads (BatchLoader: block shuffle in the default window, every array a
  head can ask for, prefetch off), rounds alternating between the stores, best and median of --repeats;
- a plain zarr read of the same rows (no loader), best of 3 x --repeats, the stores alternating;
- the codec's cost alone: crc32c over every stored chunk byte of the epoch's arrays (what decoding adds);
- single-byte damage to --flips chunks of image_patches (each flip undone before the next): how many the
  read raises on, and how many read back as wrong numbers that pass the zeros/non-finite check (without
  a chunk checksum only `cache verify` finds those).
The rows are random normals (real embeddings compress as little: float16 mantissas are noise); the OS
page cache is warm, so reads are bound by decoding, where a checksum's share is largest. Writes
crc32c_bench.json and crc32c_bench.md under --out.

    python bench/crc32c_bench.py [--items 2048] [--repeats 5] [--flips 40] [--out runs/bench]"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import google_crc32c
import numpy as np
import trivial_encoder
from loader_bench import one_epoch, raw_read
from results import publish
from scale_bench import dataset_tables
from zarr.codecs import Crc32cCodec, ZstdCodec

from cache_schemas import Geometry, open_store, writer
from cache_schemas.errors import DamagedStoreError
from cache_schemas.layout import EMBEDDINGS, space_dir
from pipeline.commit import commit_image_shard, commit_text_shard
from pipeline.plan import plan_new_content
from trainer.data import BatchLoader, Examples

BEFORE, CRC32C = "zstd (spaces before 1.5)", "zstd + crc32c (1.5)"
VARIANTS = {BEFORE: (ZstdCodec(level=1),), CRC32C: (ZstdCodec(level=1), Crc32cCodec()),
            "zstd with its frame checksum (not used)": (ZstdCodec(level=1, checksum=True),)}
DIMS = {"patches": 50, "patch_dim": 768, "text_dim": 768, "embed_dim": 512}  # ViT-B-32 at 224 px
SPEC = replace(trivial_encoder.space("vit-b-32-widths"), dims=DIMS, context_length=77)
GEOMETRY = Geometry()  # the default: 1024 rows a shard, 32 a chunk
NEEDS = frozenset({"image.patches", "image.global", "text.tokens", "text.global"})


def n_tokens(texts: list[str]) -> np.ndarray:
    """8 to 19 tokens a caption, as short web captions trimmed of padding are."""
    return np.array([8 + int(t.split()[-1]) % 12 for t in texts], np.int32)


def build(stores: dict[str, Path], items: int) -> None:
    """The same rows into each store; only the codecs its arrays are created with differ."""
    ids, kept = list(range(items)), writer.COMPRESSORS
    writers = {}
    for name, path in stores.items():
        store = open_store(str(path), mode="a")
        registered = store.register_dataset("bench", **dataset_tables(ids, ids), source={"uri": "synthetic"})
        writer.COMPRESSORS = VARIANTS[name]  # read once, when the space's arrays are created
        with store.space_writer(SPEC, GEOMETRY, "crc32c bench") as space:
            plan_new_content(space, registered, n_tokens)
        writers[name] = store
    writer.COMPRESSORS = kept
    for store in writers.values():
        with store.space_writer(SPEC, GEOMETRY, "crc32c bench") as space:
            rng = np.random.default_rng(0)  # the same numbers in every store
            for shard, planned in space.pending_work("images"):
                n = planned.num_rows
                patches = rng.standard_normal((n, DIMS["patches"], DIMS["patch_dim"]), np.float32).astype(np.float16)
                commit_image_shard(space, shard, planned, {"image_patches": patches, "image_global": _unit(rng, n)},
                                   [None] * n)
            for shard, planned in space.pending_work("texts"):
                count = int(np.sum(planned["n_tokens"].to_numpy()))
                tokens = rng.standard_normal((count, DIMS["text_dim"]), np.float32).astype(np.float16)
                commit_text_shard(space, shard, planned, tokens, _unit(rng, planned.num_rows))
            for kind in ("images", "texts"):
                space.committed_by_workers(kind, space.pending_shards(kind))
            space.compact()


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIMS["embed_dim"]), np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


def epochs(spaces: dict, repeats: int) -> dict[str, dict]:
    """Per store, an epoch's wall seconds and the CPU seconds of every thread of this process (zarr decodes
    off the caller's thread), the stores' epochs alternating so that the machine's load falls on each alike.
    On a shared machine CPU seconds are the steadier figure."""
    wall: dict[str, list[float]] = {name: [] for name in spaces}
    cpu: dict[str, list[float]] = {name: [] for name in spaces}
    for _ in range(repeats):
        for name, (space, examples) in spaces.items():
            loader = BatchLoader(space, examples, NEEDS, batch_size=64, prefetch=0)
            start = time.process_time()
            wall[name].append(one_epoch(loader)["seconds"])
            cpu[name].append(time.process_time() - start)
    return {name: {"best_s": min(wall[name]), "median_s": statistics.median(wall[name]), "best_cpu_s": min(cpu[name]),
                   "median_cpu_s": statistics.median(cpu[name]), "all_s": wall[name], "all_cpu_s": cpu[name]}
            for name in spaces}


def arrays_dir(space) -> Path:
    return Path(space.location.path(f"{space_dir(space.key)}/{EMBEDDINGS}"))


def chunk_files(space) -> list[Path]:
    return [p for p in arrays_dir(space).rglob("*") if p.is_file() and p.name != "zarr.json"]


def zarr_alone(spaces: dict, repeats: int) -> dict[str, float]:
    """Best CPU seconds of a plain zarr read of what an epoch streams (loader_bench.raw_read: every committed
    image's patches, every text's tokens, a slice per shard), the stores alternating: the codecs' share
    without the loader's work around it, and steadier than an epoch."""
    cpu: dict[str, list[float]] = {name: [] for name in spaces}
    for _ in range(repeats):
        for name, (space, _) in spaces.items():
            start = time.process_time()
            raw_read(space)
            cpu[name].append(time.process_time() - start)
    return {name: min(s) for name, s in cpu.items()}


def crc_alone(space) -> dict[str, float]:
    """crc32c over every stored byte of the arrays an epoch reads (their shard files), best of 3."""
    blobs = [p.read_bytes() for p in chunk_files(space)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for blob in blobs:
            google_crc32c.value(blob)
        best = min(best, time.perf_counter() - start)
    stored = sum(len(b) for b in blobs)
    return {"seconds": best, "stored_mb": stored / 1e6, "gb_per_s": stored / best / 1e9}


def shard_index(blob: bytes, chunks: int) -> np.ndarray:
    """(offset, nbytes) of each chunk of a Zarr shard, from the index at its end: zarr's default index
    codecs, every store's, end it with its own crc32c (4 bytes)."""
    return np.frombuffer(blob[-chunks * 16 - 4:-4], "<u8").reshape(chunks, 2)


def damage(space, flips: int, seed: int = 1) -> dict[str, int]:
    """Flip one byte in a chunk of image_patches' first shard, read that chunk's rows, undo the flip."""
    array = space.array("image_patches")
    chunk_rows = array.chunks[0]
    path = arrays_dir(space) / "image_patches" / "c" / "0" / "0" / "0"
    original = path.read_bytes()
    index = shard_index(original, GEOMETRY.rows_per_shard // chunk_rows)
    written = np.flatnonzero(index[:, 0] != np.iinfo(np.uint64).max)  # chunks past the last row are absent
    truth = array[:GEOMETRY.rows_per_shard]
    rng = np.random.default_rng(seed)
    counts = {"raised": 0, "wrong numbers passed the read check": 0, "read back right": 0}
    try:
        for _ in range(flips):
            chunk = int(rng.choice(written))
            offset, nbytes = (int(v) for v in index[chunk])
            at = offset + int(rng.integers(nbytes))
            damaged = bytearray(original)
            damaged[at] ^= 0x5A
            path.write_bytes(bytes(damaged))
            rows = np.arange(chunk * chunk_rows, (chunk + 1) * chunk_rows)
            try:
                got = space.read("image_patches", rows)
            except DamagedStoreError:
                counts["raised"] += 1
                continue
            same = np.array_equal(got.view(np.uint16), truth[rows].view(np.uint16))
            counts["read back right" if same else "wrong numbers passed the read check"] += 1
    finally:
        path.write_bytes(original)
    return counts


def table(results: dict) -> str:
    base = results["epochs"][BEFORE]
    lines = [f"Machine: {results['cores']} CPU cores (shared); {results['items']} items at ViT-B-32 widths "
             f"({results['epoch_mb']:.0f} MB an epoch reads, float16); best and median of {results['repeats']} "
             "epochs each, alternating.", "",
             "| chunks | zarr read CPU s (best) | vs before | epoch CPU s (best) | vs before | (median) | vs before "
             f"| epoch wall s (best) | vs before | stored MB | {results['flips']} byte flips: raised "
             "| wrong, passed the check | read back right |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    raw = results["zarr read CPU s (best)"]
    for name, epoch in results["epochs"].items():
        flips = results["damage"][name]
        lines.append(f"| {name} | {raw[name]:.2f} | {raw[name] / raw[BEFORE]:.3f}x "
                     f"| {epoch['best_cpu_s']:.2f} | {epoch['best_cpu_s'] / base['best_cpu_s']:.3f}x "
                     f"| {epoch['median_cpu_s']:.2f} | {epoch['median_cpu_s'] / base['median_cpu_s']:.3f}x "
                     f"| {epoch['best_s']:.2f} | {epoch['best_s'] / base['best_s']:.3f}x "
                     f"| {results['stored_mb'][name]:.0f} | {flips['raised']} "
                     f"| {flips['wrong numbers passed the read check']} | {flips['read back right']} |")
    alone = results["crc32c alone"]
    lines += ["", f"- crc32c alone over every stored byte: {alone['gb_per_s']:.1f} GB/s "
              f"({google_crc32c.implementation} implementation), {alone['seconds'] / base['best_cpu_s']:.1%} of the "
              "best epoch's CPU seconds before"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flips", type=int, default=40)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crc32c-bench-") as work:
        stores = {name: Path(work) / f"store-{i}" for i, name in enumerate(VARIANTS)}
        started = time.perf_counter()
        build(stores, args.items)
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
        spaces = {}
        for name, path in stores.items():
            store = open_store(str(path))
            space = store.space(SPEC.key)
            spaces[name] = (space, Examples.from_dataset(space, store.dataset("bench")))
        first = next(iter(spaces.values()))
        loader = BatchLoader(*first, NEEDS, batch_size=64, prefetch=0)
        results = {"cores": os.cpu_count(), "items": args.items, "repeats": args.repeats, "flips": args.flips,
                   "dims": DIMS, "epoch_mb": loader.rows_bytes() / 1e6,
                   "codecs": {name: [c.to_dict() for c in codecs] for name, codecs in VARIANTS.items()},
                   "epochs": epochs(spaces, args.repeats),
                   "zarr read CPU s (best)": zarr_alone(spaces, 3 * args.repeats),
                   "crc32c alone": crc_alone(spaces[CRC32C][0]),
                   "stored_mb": {name: sum(p.stat().st_size for p in chunk_files(space)) / 1e6
                                 for name, (space, _) in spaces.items()},
                   "damage": {name: damage(space, args.flips) for name, (space, _) in spaces.items()}}
    publish(args.out, "crc32c_bench", results, table(results))


if __name__ == "__main__":
    main()
