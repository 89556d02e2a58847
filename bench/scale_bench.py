"""The driver at scale: what planning, `cache info`, opening a space for training and an extraction
with nothing new cost the driver, in seconds and peak memory, as a space grows to 10^5, 10^6 and 10^7
unique images and as many texts; and a first extraction of 10^6 items against its rerun.

Stores are written through the project's own writer path (plans, whole shards, commit records, the
index's segments), one "extraction" of up to 10^6 rows at a time, at 4 numbers a row (the rows' count
is what the driver feels, not their width), with synthetic content hashes. Each step runs in a fresh
process; its peak is the most resident memory the process had during the step (sampled every 2 ms)
less what it had just before. Extractions use bench/trivial_encoder.py, so the driver's work shows.
Writes scale_bench.json and scale_bench.md.

    python bench/scale_bench.py [--sizes 100000 1000000 10000000] [--dataset 1000000] [--real 20000]
                                [--rerun-items 1000000] [--work DIR] [--out runs/bench]"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import trivial_encoder
from results import publish

from cache_schemas import Geometry, open_store
from cache_schemas import tables as schema

BATCH = 1_000_000  # rows per simulated extraction while a store is built
GEOMETRY = Geometry(rows_per_shard=8192, chunk_rows=32)
REQUEST = dict(model="trivial", encoder=trivial_encoder.NAME)


def content_hash(kind: str, i: int) -> str:
    return hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()


def dataset_tables(images: list[int], texts: list[int]) -> dict[str, pa.Table]:
    """Items pairing image i with text i, over synthetic content (never read: the hashes are the content)."""
    image_hashes = [content_hash("image", i) for i in images]
    text_hashes = [content_hash("text", i) for i in texts]
    n = len(images)
    items = pa.table({"item_id": [f"item-{i}" for i in images], "subset": pa.array(["all"] * n),
                      "split": pa.array(["train"] * n), "image": image_hashes, "caption": text_hashes,
                      "negative_captions": pa.array([[]] * n, pa.list_(pa.string())),
                      "negative_images": pa.array([[]] * n, pa.list_(pa.string()))})
    side = pa.array(np.full(n, 8, np.int32))
    return {"items": items,
            "images": pa.table({"hash": image_hashes, "uri": [f"synthetic://{i}" for i in images], "width": side,
                                "height": side}),
            "texts": pa.table({"hash": text_hashes, "text": [f"text {i}" for i in texts]}),
            "errors": schema.ERRORS.empty_table()}


def build(path: Path, rows: int) -> None:
    """`rows` images and texts, registered as datasets part-0, part-1, ... of up to BATCH items each."""
    from pipeline.commit import commit_image_shard, commit_text_shard
    from pipeline.plan import plan_new_content

    store = open_store(str(path), mode="a")
    spec = trivial_encoder.space()
    count = trivial_encoder.WordCounter().count
    for part, start in enumerate(range(0, rows, BATCH)):
        ids = list(range(start, min(rows, start + BATCH)))
        registered = store.register_dataset(f"part-{part}", **dataset_tables(ids, ids), source={"uri": "synthetic"})
        with store.space_writer(spec, GEOMETRY, "scale bench") as space:
            plan_new_content(space, registered, count)
            for shard, planned in space.pending_work("images"):
                vector = np.full((planned.num_rows, 4), 0.5, np.float16)
                commit_image_shard(space, shard, planned, {"image_patches": vector[:, None], "image_global": vector},
                                   [None] * planned.num_rows)
            for shard, planned in space.pending_work("texts"):
                tokens = np.full((int(np.sum(planned["n_tokens"].to_numpy())), 4), 0.5, np.float16)
                commit_text_shard(space, shard, planned, tokens, np.full((planned.num_rows, 4), 0.5, np.float16))
            for kind in ("images", "texts"):
                space.committed_by_workers(kind, space.pending_shards(kind))
            space.compact()


def real_source(path: Path, items: int) -> Path:
    """A Hugging Face-style Parquet of `items` unique 8x8 PNGs (bytes inside) with their captions."""
    from PIL import Image

    if path.exists():
        return path
    writer = None
    for start in range(0, items, 50_000):
        stop = min(items, start + 50_000)
        images = []
        for i in range(start, stop):
            buffer = io.BytesIO()
            pixels = np.frombuffer(hashlib.sha256(str(i).encode()).digest()[:24], np.uint8)
            Image.fromarray(np.resize(pixels, (8, 8, 3))).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          "caption": [f"picture number {i}" for i in range(start, stop)]})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=1000)
    writer.close()
    return path


# -- the steps, each in a process of its own -------------------------------------------------------

def step(name: str, store: str, args: argparse.Namespace) -> dict:
    """Runs one step here; returns its seconds and the peak memory it added."""
    prepare, run = STEPS[name]
    state = prepare(store, args)
    import psutil

    process, peak, stop = psutil.Process(), [0], threading.Event()
    baseline = process.memory_info().rss

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    detail = run(store, state, args)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return {"seconds": seconds, "peak_mb": (peak[0] - baseline) / 1e6, **(detail or {})}


def _plan_prepare(store: str, args):
    rows = args.rows
    half = args.dataset // 2
    ids = list(range(half)) + list(range(rows, rows + args.dataset - half))  # half stored, half new
    return dataset_tables(ids, ids)


def _plan(store: str, tables: dict, args) -> dict:
    from pipeline.plan import plan_new_content

    opened = open_store(store, mode="a")
    registered = opened.register_dataset("new", **tables, source={"uri": "synthetic"})
    with opened.space_writer(trivial_encoder.space(), GEOMETRY, "scale bench") as space:
        planned = plan_new_content(space, registered, trivial_encoder.WordCounter().count)
    return {"planned": planned}


def _info(store: str, state, args) -> dict:
    from cache_schemas.info import describe_store

    described = describe_store(open_store(store))
    return {"images": next(iter(described["spaces"].values()))["images"]}


def _examples(store: str, state, args) -> dict:
    from trainer.data import Examples

    opened = open_store(store)
    examples = Examples.from_dataset(opened.space("trivial"), opened.dataset("part-0"))
    return {"items": len(examples)}


def _extract(store: str, state, args) -> dict:
    from pipeline.cluster import ClusterConfig
    from pipeline.encoders import EncoderRequest
    from pipeline.extract import ExtractOptions, extract

    summary = extract(args.source, "parquet", "real", EncoderRequest(**REQUEST), store,
                      cluster=ClusterConfig(processes=False),
                      options=ExtractOptions(rows_per_shard=GEOMETRY.rows_per_shard, batch_size=1024, progress=False,
                                             decode_processes=0))
    return {key: getattr(summary, key) for key in ("items", "images_encoded", "texts_encoded", "images_read",
                                                    "images_trusted", "shards_run")}


STEPS = {"plan": (_plan_prepare, _plan), "info": (lambda s, a: None, _info),
         "examples": (lambda s, a: None, _examples), "extract": (lambda s, a: None, _extract)}


def in_process(name: str, store: Path, **more) -> dict:
    command = [sys.executable, __file__, "--step", name, "--store", str(store)]
    for key, value in more.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"step {name} failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--dataset", type=int, default=1_000_000, help="items of the dataset planned into each store")
    parser.add_argument("--real", type=int, default=20_000, help="items of the real dataset rerun on each store")
    parser.add_argument("--rerun-items", type=int, default=1_000_000)
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.store, args)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": platform.node(), "cores": os.cpu_count(), "dataset": args.dataset, "real": args.real,
               "rows_per_shard": GEOMETRY.rows_per_shard, "sizes": {}}
    real = real_source(work / f"real-{args.real}.parquet", args.real)
    for rows in args.sizes:
        store = work / f"store-{rows}"
        print(f"store of {rows} rows", flush=True)
        started = time.perf_counter()
        if not (store / "vlcache.json").exists():
            build(store, rows)
        built = time.perf_counter() - started
        first = in_process("extract", store, source=real)
        results["sizes"][rows] = {
            "build_s": built, "first_extract": first,
            "rerun": in_process("extract", store, source=real),
            "info": in_process("info", store),
            "examples": in_process("examples", store),
            "plan": in_process("plan", store, rows=rows, dataset=args.dataset),  # last: it adds a plan
        }
    if args.rerun_items:
        source = real_source(work / f"real-{args.rerun_items}.parquet", args.rerun_items)
        store = work / f"rerun-{args.rerun_items}"
        print(f"first run and rerun of {args.rerun_items} items", flush=True)
        results["rerun_items"] = {"items": args.rerun_items, "first": in_process("extract", store, source=source),
                                  "rerun": in_process("extract", store, source=source)}
    publish(args.out, "scale_bench", results, table(results))


def table(results: dict) -> str:
    sizes = {int(rows): r for rows, r in results["sizes"].items()}
    lines = [f"Driver cost against the rows a space holds, on {results['machine']} ({results['cores']} cores); each "
             f"step in a fresh process; peak = the most memory it added. Planned dataset: {results['dataset']:,} "
             f"items, half of them stored; rerun: {results['real']:,} real items with nothing new.", "",
             "| rows stored | plan: s | plan: peak MB | cache info: s | peak MB | Examples: s | peak MB | "
             "rerun: s | peak MB |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rows, r in sizes.items():
        lines.append(f"| {int(rows):,} | {r['plan']['seconds']:.1f} | {r['plan']['peak_mb']:.0f} | "
                     f"{r['info']['seconds']:.1f} | {r['info']['peak_mb']:.0f} | {r['examples']['seconds']:.1f} | "
                     f"{r['examples']['peak_mb']:.0f} | {r['rerun']['seconds']:.1f} | {r['rerun']['peak_mb']:.0f} |")
    # Slopes from the smallest store that holds the planned dataset's stored half: below it, the plan
    # step plans more new rows (into 10^5 rows, 900,000 of 10^6 are new), which is not the store's cost.
    rows = sorted(sizes)
    held = [n for n in rows if n >= results["dataset"]] or rows
    if len(held) > 1:
        low, high = held[0], held[-1]
        lines += ["", f"Slope between the stores of {low:,} and {high:,} rows, per stored row:"]
        for name in ("plan", "info", "examples", "rerun"):
            per_row_bytes = (sizes[high][name]["peak_mb"] - sizes[low][name]["peak_mb"]) * 1e6 / (high - low)
            per_row_us = (sizes[high][name]["seconds"] - sizes[low][name]["seconds"]) * 1e6 / (high - low)
            lines.append(f"- {name}: {per_row_bytes:.1f} bytes and {per_row_us:.2f} us per stored row")
    if "rerun_items" in results:
        r = results["rerun_items"]
        lines += ["", f"{r['items']:,} items (real images in a Parquet, trivial encoder): first run "
                  f"{r['first']['seconds']:.1f} s, rerun with nothing new {r['rerun']['seconds']:.1f} s "
                  f"({r['rerun']['seconds'] / r['first']['seconds']:.0%}); the rerun read "
                  f"{r['rerun']['images_read']} images and trusted {r['rerun']['images_trusted']}."]
    if "note" in results:
        lines += ["", results["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
