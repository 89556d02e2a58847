"""Metadata against history, side by side in one run: the time to open a space (its committed rows)
and to summarise the store (`vlcache cache info`) after 10 and after 10,000 commits of the same kind,
with and without the space's compacted index (`vlcache cache compact`). Commits are written through
the store's own API (plans, Zarr writes, part files) with one row each, so only their number differs;
and once more as 10 commits holding the same rows as the 10,000 (1,000 rows each), so that only the
history differs. Writes metadata_bench.json and metadata_bench.md.

    python bench/metadata_bench.py --out runs/bench [--commits 10 10000]"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
from results import publish

from cache_schemas import Geometry, open_store
from cache_schemas.info import describe_store
from pipeline.encoders import EncoderRequest, describe

REPEATS = 3


def build(path: str, commits: int, rows_per_commit: int = 1) -> str:
    """A store whose one space holds `commits` committed image shards of `rows_per_commit` rows."""
    store = open_store(path, mode="a")
    spec = describe(EncoderRequest("vlcache-tiny"))
    rows = commits * rows_per_commit
    with store.space_writer(spec, Geometry.for_shard_rows(rows_per_commit), "metadata bench") as space:
        plan = pa.table({"hash": [f"{i:064x}" for i in range(rows)], "uri": [f"img/{i}.png" for i in range(rows)],
                         "width": pa.array([8] * rows, pa.int32()), "height": pa.array([8] * rows, pa.int32()),
                         "row": pa.array(np.arange(rows), pa.int64())})
        space.write_plan("images", plan)
        space.grow("images", commits)
        vectors = np.ones((rows_per_commit, *space.layouts["image_global"].row_shape), dtype=space.spec.dtype)
        for shard in range(commits):
            start = shard * rows_per_commit
            space.array("image_global")[start:start + rows_per_commit] = vectors
            part = plan.slice(start, rows_per_commit)
            space.commit("images", shard, part.append_column("error", pa.nulls(rows_per_commit, pa.string())), {})
        return space.key


def timed(fn) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(path: str, key: str) -> dict[str, float]:
    return {"open a space": timed(lambda: open_store(path).space(key).images()),
            "cache info": timed(lambda: describe_store(open_store(path))),
            "cache info --disk": timed(lambda: describe_store(open_store(path), disk_bytes=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--commits", nargs=2, type=int, default=[10, 10_000])
    args = parser.parse_args()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "seconds": {}}
    few, many = args.commits
    stores = [(f"{few} commits", few, 1), (f"{many} commits", many, 1),
              (f"{few} commits of {many // few} rows", few, many // few)]
    with tempfile.TemporaryDirectory() as workdir:
        for name, commits, rows in stores:
            path = os.path.join(workdir, "store")
            key = build(path, commits, rows)
            results["seconds"][f"{name}, no index"] = measure(path, key)
            with open_store(path, mode="a").space_writer(open_store(path).space(key).spec, Geometry(1, 1),
                                                         "metadata bench") as space:
                space.compact()
            results["seconds"][f"{name}, compacted"] = measure(path, key)
            shutil.rmtree(path)
    lines = [f"Metadata cost against history ({results['machine']}); best of {REPEATS}, seconds:", "",
             "| store | open a space | cache info | cache info --disk |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s['open a space']:.3f} | {s['cache info']:.3f} | {s['cache info --disk']:.3f} |"
              for name, s in results["seconds"].items()]
    lines.append("")
    for state in ("no index", "compacted"):
        a, b = results["seconds"][f"{few} commits, {state}"], results["seconds"][f"{many} commits, {state}"]
        ratios = {what: b[what] / a[what] for what in a}
        results.setdefault("ratios", {})[state] = ratios
        lines.append(f"- {many} vs {few} commits, {state}: open a space {ratios['open a space']:.1f}x, "
                     f"cache info {ratios['cache info']:.1f}x (--disk {ratios['cache info --disk']:.1f}x)")
        same_rows = results["seconds"][f"{few} commits of {many // few} rows, {state}"]
        history = {what: b[what] / same_rows[what] for what in b}
        results["ratios"][f"{state}, same rows"] = history
        lines.append(f"- {many} commits vs {few} commits of the same {many} rows, {state}: open a space "
                     f"{history['open a space']:.1f}x, cache info {history['cache info']:.1f}x "
                     f"(--disk {history['cache info --disk']:.1f}x)")
    publish(args.out, "metadata_bench", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
