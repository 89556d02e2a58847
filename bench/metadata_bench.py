"""Metadata against history, side by side in one run: the time to open a space (its committed rows)
and to summarise the store (`vlcache cache info`) after 10 and after 10,000 commits of the same kind,
with and without the space's compacted index (`vlcache cache compact`). Commits are written through
the store's own API (plans, Zarr writes, part files) with one row each, so only their number differs.
Writes metadata_bench.json and metadata_bench.md.

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


def build(path: str, commits: int) -> str:
    """A store whose one space holds `commits` committed image shards of one row (and one text shard)."""
    store = open_store(path, mode="a")
    spec = describe(EncoderRequest("vlcache-tiny"))
    with store.space_writer(spec, Geometry.for_shard_rows(1), "metadata bench") as space:
        hashes = [f"{i:064x}" for i in range(commits)]
        plan = pa.table({"hash": hashes, "uri": [f"img/{i}.png" for i in range(commits)],
                         "width": pa.array([8] * commits, pa.int32()), "height": pa.array([8] * commits, pa.int32()),
                         "row": pa.array(np.arange(commits), pa.int64())})
        space.write_plan("images", plan)
        space.grow("images", commits)
        vectors = np.ones((1, *space.layouts["image_global"].row_shape), dtype=space.spec.dtype)
        for row in range(commits):
            space.array("image_global")[row:row + 1] = vectors
            space.commit("images", row, plan.slice(row, 1).append_column("error", pa.nulls(1, pa.string())), {})
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
    with tempfile.TemporaryDirectory() as workdir:
        for commits in args.commits:
            path = os.path.join(workdir, f"store-{commits}")
            key = build(path, commits)
            results["seconds"][f"{commits} commits, no index"] = measure(path, key)
            with open_store(path, mode="a").space_writer(open_store(path).space(key).spec, Geometry(1, 1),
                                                         "metadata bench") as space:
                space.compact()
            results["seconds"][f"{commits} commits, compacted"] = measure(path, key)
            shutil.rmtree(path)
    few, many = args.commits
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
    publish(args.out, "metadata_bench", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
