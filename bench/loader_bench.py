"""Trainer streaming benchmark, side by side in one run: Zarr chunks decoded and time per epoch for the
loader's block shuffle (items grouped by chunk, shuffled within windows), for a plain random
permutation read through the same windows (what a random sampler does), and for the block shuffle
read through zarr's orthogonal indexing (vlcache before), and for a resident loader (every row read
once and kept on --train-device: its first epoch, then the next); the epoch against a raw zarr read
of the same arrays; the traced peak memory against the window (--buffer's and a trainer's default);
what checking reads costs (no check, the check every read makes, a full checksum of each shard on first
touch); and zarr's cost per chunk, read alone against read in a shard's slice. Writes loader_bench.json
and loader_bench.md; with --resident-only, only the resident loader's two epochs (what a short GPU lease
has time for), as loader_bench_resident.json and .md."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np
import torch
from results import publish

from cache_schemas import SpaceEmbeddings, checksum, open_store
from pipeline.cluster import ClusterConfig
from pipeline.encoders import EncoderRequest
from pipeline.extract import ExtractOptions, extract
from trainer.data import BatchLoader, Examples
from workflows.examples import write_sugarcrepe_example

NEEDS = frozenset({"image.patches", "text.tokens"})
REPEATS = 3  # epochs and raw reads: the best of this many
DEFAULT_BUFFER = BatchLoader.shuffle_buffer  # a trainer's window (the dataclass default)


class _PermutationLoader(BatchLoader):
    """The same loader and windows, but items in a plain random order: no chunk grouping."""

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        usable = len(order) - len(order) % self.batch_size
        return [order[i:i + self.batch_size] for i in range(0, usable, self.batch_size)]


class _OIndexSpace(SpaceEmbeddings):
    """The space read with zarr's orthogonal indexing (vlcache before reads became slices)."""

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.array(name).oindex[rows]


def one_epoch(loader: BatchLoader, epoch: int = 0) -> dict[str, float]:
    """Batches of `epoch` (from where the loader stands), timed."""
    start = time.perf_counter()
    batches = 0
    for batch in loader:
        if batch.epoch > epoch:
            break
        batches += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # batches gathered on a GPU are ready only then
    seconds = time.perf_counter() - start
    return {"batches": batches, "seconds": seconds, "batches_per_s": batches / seconds,
            "image_chunk_reads": loader.chunk_reads["image_patches"],
            "text_chunk_reads": loader.chunk_reads["text_tokens"],
            "max_window_mb": loader.max_window_bytes / 1e6}


def resident_epochs(space, examples, args) -> dict[str, dict]:
    resident = BatchLoader(space, examples, NEEDS, batch_size=64, shuffle_buffer=args.buffer, prefetch=0,
                           resident_mb=1e9, device=args.train_device)
    return {"resident: the first epoch (reads every row)": one_epoch(resident),
            "resident: the next epoch": one_epoch(resident, epoch=1)}


def epoch_table(results: dict) -> list[str]:
    lines = [f"Machine: {os.cpu_count()} CPU cores; rows kept on {results['train_device']}; {results['model']} widths.",
             "", "| loader | batches | image chunk reads | text chunk reads | epoch s | batches/s |",
             "|---|---:|---:|---:|---:|---:|"]
    return lines + [f"| {n} | {r['batches']} | {r['image_chunk_reads']} | {r['text_chunk_reads']} "
                    f"| {r['seconds']:.2f} | {r['batches_per_s']:.0f} |"
                    for n, r in results.items() if isinstance(r, dict) and "batches" in r]


def peak_memory(space, examples, buffer: int) -> dict[str, float]:
    """Traced peak over one epoch (prefetch off) above the baseline of a store already open and read once,
    against the largest window's rows."""
    loader = BatchLoader(space, examples, NEEDS, batch_size=64, shuffle_buffer=buffer, prefetch=0)
    tracemalloc.start()
    baseline, _ = tracemalloc.get_traced_memory()
    one_epoch(loader)
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    return {"buffer": buffer, "peak_mb": peak / 1e6, "window_mb": loader.max_window_bytes / 1e6,
            "peak_over_window": peak / loader.max_window_bytes}


def raw_read(space) -> dict[str, float]:
    """A plain zarr read of what the loader streams (every committed image's patches, every text's
    tokens), one slice per committed shard: the disk-and-decode bound. Seconds and bytes decoded."""
    spans = [("image_patches", space.geometry.shard_rows(s).start,
              space.geometry.shard_rows(s).start + space.part("images", s)[0].num_rows)
             for s in space.committed_shards("images")]
    spans += [("text_tokens", *space.part("texts", s)[1]["token_rows"]) for s in space.committed_shards("texts")]
    start, nbytes = time.perf_counter(), 0
    for name, lo, hi in spans:
        nbytes += space.array(name)[lo:hi].nbytes
    return {"seconds": time.perf_counter() - start, "bytes": nbytes}


def zarr_chunk_cost(space, name: str = "image_patches") -> dict[str, float]:
    """zarr's milliseconds per chunk over the first committed shard, read one chunk per call (what a
    window's scattered chunks cost) and as one slice (the raw read); the best of REPEATS each."""
    shard = space.committed_shards("images")[0]
    first = space.geometry.shard_rows(shard).start
    last = first + space.part("images", shard)[0].num_rows
    array = space.array(name)
    chunk = array.chunks[0]
    starts = range(first, last - last % chunk, chunk)  # whole chunks only

    def best(read) -> float:
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            read()
            times.append(time.perf_counter() - start)
        return min(times) / len(starts) * 1e3

    return {"chunk_kb": array[:chunk].nbytes / 1e3,
            "one chunk per call": best(lambda: [array[s:s + chunk] for s in starts]),
            "one slice per shard": best(lambda: array[first:starts[-1] + chunk])}


def read_checks(space, batches: list[np.ndarray], name: str = "image_patches") -> dict[str, float]:
    """Seconds to read `batches` of rows three ways, side by side."""
    def raw() -> None:  # the same reads (chunk-aligned slices), without the check
        for rows in batches:
            space._read_rows(name, np.unique(rows))

    def checked() -> None:  # what SpaceEmbeddings.read does on every read
        for rows in batches:
            space.read(name, rows)

    def checksummed() -> None:  # a full sha256 of each shard when first touched, as cache verify computes it
        verified: set[int] = set()
        for rows in batches:
            for shard in set((rows // space.geometry.rows_per_shard).tolist()) - verified:
                part, meta = space.part("images", shard)
                block = space.array(name)[int(part["row"].to_numpy().min()):int(part["row"].to_numpy().max()) + 1]
                assert checksum(block) == meta["checksums"][name]
                verified.add(shard)
            space.read(name, rows)

    raw()  # warm: metadata and the OS page cache, for every method alike
    seconds = {}
    for label, read in (("no check", raw), ("zeros and non-finite check", checked),
                        ("sha256 per shard on first touch", checksummed)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            read()
            times.append(time.perf_counter() - start)
        seconds[label] = min(times)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--buffer", type=int, default=512)
    parser.add_argument("--model", default="vlcache-tiny", help="the encoder whose widths the store has")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="where the extraction runs")
    parser.add_argument("--train-device", default="cpu", help="where a resident loader keeps the rows")
    parser.add_argument("--resident-only", action="store_true", help="only the resident loader's two epochs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        annotations, images = write_sugarcrepe_example(workdir, sizes={"swap_att": args.items}, n_images=args.items,
                                                       image_size=args.image_size)
        store_path = os.path.join(workdir, "store")
        extract(annotations, "sugarcrepe", "bench", EncoderRequest(args.model), store_path, images_root=images,
                cluster=ClusterConfig(), options=ExtractOptions(rows_per_shard=1024, progress=False,
                                                                device=args.device, batch_size=256))
        store = open_store(store_path)
        space = store.space(args.model)
        examples = Examples.from_dataset(space, store.dataset("bench"))
        results = {"model": args.model, "cpu_count": os.cpu_count(), "train_device": args.train_device}
        if args.resident_only:
            results.update(resident_epochs(space, examples, args))
            publish(args.out, "loader_bench_resident", results, "\n".join(epoch_table(results)) + "\n")
            return
        oindex = _OIndexSpace(space.location, space.spec, space.geometry)
        for name, cls, source in (("block shuffle", BatchLoader, space),
                                  ("random permutation", _PermutationLoader, space),
                                  ("block shuffle, zarr orthogonal indexing", BatchLoader, oindex)):
            epochs = [one_epoch(cls(source, examples, NEEDS, batch_size=64, shuffle_buffer=args.buffer, prefetch=0))
                      for _ in range(REPEATS)]
            results[name] = min(epochs, key=lambda r: r["seconds"])
        results.update(resident_epochs(space, examples, args))
        raw = min((raw_read(space) for _ in range(REPEATS)), key=lambda r: r["seconds"])
        memory = [peak_memory(space, examples, buffer) for buffer in sorted({args.buffer, DEFAULT_BUFFER})]
        store_mb = sum(space.nbytes_committed()[n] for n in ("image_patches", "text_tokens")) / 1e6
        rows = np.random.default_rng(0).permutation(space.images()["row"].to_numpy())
        checks = read_checks(space, [rows[i:i + 64] for i in range(0, len(rows), 64)])
        results["zarr ms per chunk"] = zarr_chunk_cost(space)
    ours, plain = results["block shuffle"], results["random permutation"]
    results["ratios"] = {
        "image_chunk_reads (permutation / ours)": plain["image_chunk_reads"] / ours["image_chunk_reads"],
        "epoch_seconds (permutation / ours)": plain["seconds"] / ours["seconds"],
        "epoch_seconds (orthogonal indexing / slices)":
            results["block shuffle, zarr orthogonal indexing"]["seconds"] / ours["seconds"],
        "loader epoch vs a raw read of the same arrays (raw seconds / epoch seconds)": raw["seconds"] / ours["seconds"],
    }
    results["raw read"] = raw
    results["memory"] = {"store_mb": store_mb, "by window": memory}
    lines = epoch_table(results)
    lines += ["", *(f"- {k}: {v:.2f}x" for k, v in results["ratios"].items())]
    lines += [f"- traced peak over one epoch (prefetch off) / the largest window, buffer {m['buffer']}: "
              f"{m['peak_over_window']:.2f}x (window {m['window_mb']:.1f} MB, store {store_mb:.0f} MB)" for m in memory]
    cost = results["zarr ms per chunk"]
    lines += [f"- zarr per {cost['chunk_kb']:.0f} kB image_patches chunk: {cost['one chunk per call']:.2f} ms read one "
              f"chunk per call, {cost['one slice per shard']:.2f} ms in one slice per shard"]
    results["read checks (seconds, one pass of random batches of 64 over image_patches)"] = checks
    lines += ["", "| reading every image row once, random batches of 64, the same slices | time vs no check |",
              "|---|---:|"]
    lines += [f"| {label} | {seconds / checks['no check']:.2f}x |" for label, seconds in checks.items()]
    publish(args.out, "loader_bench", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
