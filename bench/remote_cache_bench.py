"""One epoch of the trainer's loader (BatchLoader, streaming) read from a store on an S3-compatible server
(moto, in a process of its own on loopback) without a cache, with an empty chunk cache (cold) and with the
cache it filled (warm, a new reader), side by side with the same store on local disk, in rounds; the
epochs' times as ratios to the local one, the chunk files the server sent, the cache's size, and what a
reader pays to open the store (read from it with or without a cache). Writes remote_cache_bench.json and
remote_cache_bench.md."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import boto3
import s3fs
from results import publish

from cache_schemas import ChunkCache, open_store
from pipeline.cluster import ClusterConfig
from pipeline.encoders import EncoderRequest
from pipeline.extract import ExtractOptions, extract
from trainer.data import BatchLoader, Examples
from workflows.examples import write_sugarcrepe_example

NEEDS = frozenset({"image.patches", "text.tokens"})
SERVER = """
import sys, threading
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

app, gets = DomainDispatcherApplication(create_backend_app), [0]

def counted(environ, start_response):  # GETs of chunk files (not listings)
    if environ["REQUEST_METHOD"] == "GET" and "/c/" in environ["PATH_INFO"] and "list-type" not in environ.get(
            "QUERY_STRING", ""):
        gets[0] += 1
    return app(environ, start_response)

server = make_server("127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_port, flush=True)
for _ in sys.stdin:  # each line asks for the chunk GETs since the last
    print(gets[0], flush=True)
    gets[0] = 0
server.shutdown()
"""


class Moto:
    """A moto server in a process of its own (its request handling does not share our interpreter's lock),
    the storage options that reach it, and the chunk files it served."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        port = int(self.process.stdout.readline())
        self.options = {"key": "bench", "secret": "bench",
                        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}

    def chunk_gets(self) -> int:
        """Chunk files GET since the last call."""
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def epoch(uri: str, args, server: Moto | None = None, cache: ChunkCache | None = None) -> dict:
    """A fresh reader (as a new training process is) and its first epoch, timed from opening the store."""
    storage_options = server.options if server else None
    if server:
        server.chunk_gets()
    start = time.perf_counter()
    store = open_store(uri, storage_options=storage_options, cache=cache)
    space = store.space(args.model)
    loader = BatchLoader(space, Examples.from_dataset(space, store.dataset("bench")), NEEDS, batch_size=64,
                         shuffle_buffer=args.buffer)
    batches = 0
    for batch in loader:
        if batch.epoch > 0:
            break
        batches += 1
    result = {"seconds": time.perf_counter() - start, "batches": batches}
    if server:
        result["chunk_gets"] = server.chunk_gets()
    if cache is not None:
        result.update(cache_files=len(cache.entries()), cache_mb=cache.size() / 1e6)
    return result


def opening(uri: str, args, server: Moto) -> dict:
    """What every reader pays before its first batch, cache or not: the store, the dataset, the index and the
    metadata of the arrays the loader reads, all read from the store."""
    start = time.perf_counter()
    store = open_store(uri, storage_options=server.options)
    space = store.space(args.model)
    Examples.from_dataset(space, store.dataset("bench"))
    for name in ("image_patches", "text_tokens"):
        space.array(name)
    return {"seconds": time.perf_counter() - start, "batches": 0}


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def measure(workdir: str, server: Moto, args) -> dict:
    """The store extracted locally and uploaded; then each setting's best epoch over --repeats rounds."""
    annotations, images = write_sugarcrepe_example(workdir, sizes={"swap_att": args.items}, n_images=args.items,
                                                   image_size=args.image_size)
    local = os.path.join(workdir, "store")
    extract(annotations, "sugarcrepe", "bench", EncoderRequest(args.model), local, images_root=images,
            cluster=ClusterConfig(), options=ExtractOptions(rows_per_shard=args.rows_per_shard, progress=False,
                                                            batch_size=256))
    options = server.options
    boto3.client("s3", aws_access_key_id=options["key"], aws_secret_access_key=options["secret"],
                 **options["client_kwargs"]).create_bucket(Bucket="bench")
    s3fs.S3FileSystem(**options).put(local, "bench/store", recursive=True)
    remote = "s3://bench/store"
    rounds = []
    for i in range(args.repeats):  # each round runs every setting once: the machine's load drifts for all alike
        cache = ChunkCache(os.path.join(workdir, f"cache-{i}"))  # empty: this round's cold epoch fills it
        rounds.append({"local disk": epoch(local, args), "S3, opening the store only": opening(remote, args, server),
                       "S3, no cache": epoch(remote, args, server),
                       "S3, cold cache": epoch(remote, args, server, cache),
                       "S3, warm cache": epoch(remote, args, server, cache)})
    return {"store_mb": sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(local) for f in files) / 1e6,
            **{name: best([r[name] for r in rounds]) for name in rounds[0]}}


def table(results: dict, args) -> str:
    lines = [f"Machine: {os.cpu_count()} CPU cores; {args.items} items ({args.model}: patches and tokens read), a "
             f"{results['store_mb']:.1f} MB store; moto on loopback in a process of its own; best of {args.repeats} "
             "rounds of every setting, each epoch a new reader.", "",
             "| one epoch | batches | seconds | vs local disk | chunk GETs | cache files | cache MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ratio in results["seconds / local disk"].items():
        r = results[name]
        cached = f"{r['cache_files']} | {r['cache_mb']:.1f}" if "cache_mb" in r else " | "
        lines.append(f"| {name} | {r['batches']} | {r['seconds']:.2f} | {ratio:.2f}x | {r.get('chunk_gets', '')} "
                     f"| {cached} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--items", type=int, default=8000)
    parser.add_argument("--rows-per-shard", type=int, default=256, help="rows per shard file (the unit fetched)")
    parser.add_argument("--buffer", type=int, default=512, help="the loader's shuffle window (items)")
    parser.add_argument("--model", default="vlcache-tiny", help="the encoder whose widths the store has")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every setting; the fastest of each is kept")
    args = parser.parse_args()
    server = Moto()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            results = {"model": args.model, "items": args.items, "cpu_count": os.cpu_count(),
                       **measure(workdir, server, args)}
    finally:
        server.close()
    local = results["local disk"]["seconds"]
    results["seconds / local disk"] = {name: results[name]["seconds"] / local for name in (
        "local disk", "S3, opening the store only", "S3, no cache", "S3, cold cache", "S3, warm cache")}
    publish(args.out, "remote_cache_bench", results, table(results, args))


if __name__ == "__main__":
    main()
