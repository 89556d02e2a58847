"""`extract`: read a source, register it as a dataset, and encode what the space lacks.

    source --reader--> RawDataset --probe (Dask)--> dataset tables (content by hash)
           --plan--> rows for new content --run_shard (Dask)--> arrays + commit records

Every stage before the encoder pass is cheap and repeatable; the encoder pass runs each planned,
uncommitted shard exactly once."""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from cache_schemas import (
    DatasetTables,
    EmbeddingSpace,
    Geometry,
    InvalidSourceError,
    SpaceWriter,
    VlcacheError,
    open_store,
    text_hash,
)
from cache_schemas import tables as schema
from cache_schemas.errors import RESUME, disk_full_as_error
from cache_schemas.store import check_dataset_name, writable_store

from .cluster import ClusterConfig, Workers, start_workers
from .encoders import EncoderRequest, describe, tokenizer_for
from .encoders.base import pretrained_of
from .images import Probe, file_of, probe_many, stamp_many
from .plan import plan_new_content
from .readers import RawDataset, ReaderOptions, SourceOptions, read_source
from .readers.remote import absolute
from .shards import ShardResult, ShardTask, run_shard

PROBE_BATCH = 256
STAMP_BATCH = 4096  # files a worker looks at in one task; at most this many, the driver looks itself


class ShardFailedError(VlcacheError, RuntimeError):
    """An encoder task failed; what committed before it stays."""


@dataclass(frozen=True)
class ExtractOptions:
    batch_size: int = 64
    device: str = "auto"
    rows_per_shard: int = 1024
    retry_failed: bool = False
    progress: bool = True
    replace: bool = False  # a dataset of that name with other content is replaced, not refused
    wait: float = 3600.0  # seconds to wait while another extraction writes the same space
    # Decode images in this many processes per worker (0: in threads). None: processes where a GPU
    # encodes (every core of the worker's share but two), threads where the CPU does.
    decode_processes: int | None = None
    rehash: bool = False  # read every image again, even a file unchanged since the dataset's last run


@dataclass
class Summary:
    dataset: str
    space: str
    items: int
    images: int  # unique images of the dataset (readable ones)
    texts: int  # unique texts of the dataset
    images_present: int  # already in the space before this run
    texts_present: int
    images_encoded: int  # encoded by this run
    texts_encoded: int
    failed: int  # images that could not be read or decoded
    shards_run: int
    shards_resumed: int  # of shards_run, those planned by an interrupted earlier run
    seconds: float
    worker_seconds: dict[str, float]  # summed over shards: model load, decode wait, encode, write
    images_read: int = 0  # image files read and hashed by this run
    images_trusted: int = 0  # files unchanged since the dataset's last run: their hash taken, not read
    workers_lost: int = 0  # workers (SLURM jobs, remote workers) that left mid-run
    shards_reassigned: int = 0  # shards those workers held, which other workers then ran

    def lines(self) -> list[str]:
        return [
            f"dataset {self.dataset}: {self.items} items, {self.images} unique images, {self.texts} unique texts",
            f"space {self.space}",
            f"encoded {self.images_encoded} images and {self.texts_encoded} texts "
            f"({self.images_present} images and {self.texts_present} texts already present)",
            f"failed {self.failed} images (see `vlcache cache info` and the errors table)",
            f"hashed {self.images_read} images; {self.images_trusted} unchanged since the last run, not read again "
            "(--rehash reads them)",
            f"{self.shards_run} shards in {self.seconds:.1f}s ({self.shards_resumed} resumed from an earlier run)",
            *([f"worker time: {', '.join(f'{k} {v:.1f}s' for k, v in self.worker_seconds.items())}"]
              if self.worker_seconds else []),
            *([f"workers lost mid-run: {self.workers_lost} ({self.shards_reassigned} shards they held ran on others)"]
              if self.workers_lost else []),
        ]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def extract(source: str, fmt: str, dataset: str, encoder: EncoderRequest, store_uri: str, *,
            images_root: str | None = None, split: str | None = None, cluster: ClusterConfig = ClusterConfig(),
            options: ExtractOptions = ExtractOptions(), storage_options: dict | None = None,
            workers: Workers | None = None, reader: ReaderOptions = ReaderOptions(),
            source_options: dict | None = None) -> Summary:
    """`workers`: started workers to reuse (several extractions, one cluster start); `cluster` describes them.
    `reader`: column names and separator of tabular sources. `source_options`: fsspec options for the
    filesystem a remote source and its images are on; they reach the workers as task arguments and are
    written nowhere (the dataset records the source's URI only)."""
    started = time.perf_counter()
    sources = SourceOptions(source_options)
    # User mistakes (and a source its filesystem refuses us) surface before any cluster starts.
    check_dataset_name(dataset)
    raw = read_source(source, fmt, images_root, split, reader, sources)
    spec = describe(encoder)
    cluster = cluster.for_device(gpu=_encodes_on_gpu(options.device))
    # The cluster starts before the store is touched: a cluster that cannot start writes nothing.
    with nullcontext(workers) if workers else start_workers(cluster) as workers, \
            disk_full_as_error(f"the store at {store_uri}", RESUME):
        losses_before = workers.lost, workers.reassigned  # workers may serve several extractions
        found = writable_store(store_uri, storage_options)  # refused here if it cannot be; created only below
        earlier = None if options.rehash or found is None else _earlier_stamps(found, dataset)
        probes = _probe_images(workers, raw.image_uris(), earlier, options.progress, sources)
        _require_some_image(probes)
        store = open_store(store_uri, mode="a", storage_options=storage_options)
        tables = dataset_tables(raw, probes)
        registered = store.register_dataset(dataset, **tables, source={"uri": absolute(source), "format": fmt},
                                            replace=options.replace, stamps=_stamps(probes))
        geometry = Geometry.for_shard_rows(options.rows_per_shard)
        with store.space_writer(spec, geometry, f"vlcache extract --dataset {dataset}", wait=options.wait,
                                on_wait=lambda message: print(message, file=sys.stderr)) as space:
            present = {k: _present(space, k, registered) for k in ("images", "texts")}
            interrupted = {k: set(space.pending_shards(k)) for k in ("images", "texts")}
            plan_new_content(space, registered, tokenizer_for(spec).count, retry_failed=options.retry_failed)
            # Workers get the weights as found here (a checkpoint's absolute path): their folder may not be ours.
            results = _encode(workers, space, spec, cluster, options, sources)
            for kind in ("images", "texts"):
                space.committed_by_workers(kind, [r.shard for r in results if r.kind == kind])
            if results:
                space.compact()  # indexes this run's commits: the next reader opens segments, not parts
    resumed = sum(r.shard in interrupted[r.kind] for r in results)
    return Summary(
        dataset=dataset, space=space.key, items=registered.items.num_rows,
        images=registered.images.num_rows, texts=registered.texts.num_rows,
        images_present=present["images"], texts_present=present["texts"],
        images_encoded=sum(r.rows - r.failed for r in results if r.kind == "images"),
        texts_encoded=sum(r.rows - r.failed for r in results if r.kind == "texts"),
        failed=registered.errors.num_rows + sum(r.failed for r in results),
        shards_run=len(results), shards_resumed=resumed, seconds=time.perf_counter() - started,
        worker_seconds=_stage_totals(results), images_trusted=sum(p.trusted for p in probes.values()),
        images_read=sum(not p.trusted for p in probes.values()), workers_lost=workers.lost - losses_before[0],
        shards_reassigned=workers.reassigned - losses_before[1],
    )


def _encodes_on_gpu(device: str) -> bool:
    return torch.cuda.is_available() if device == "auto" else device.startswith("cuda")


def _stage_totals(results: list[ShardResult]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.stages.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


def _earlier_stamps(store, dataset: str) -> pa.Table | None:
    """What the dataset's last run saw of its image files, if it ran before."""
    return store.dataset(dataset).stamps if dataset in store.dataset_names() else None


def _stamps(probes: dict[str, Probe]) -> pa.Table:
    rows = [p for p in probes.values() if p.hash is not None and p.stamp is not None]
    return pa.table({"uri": [p.uri for p in rows], "stamp": [p.stamp for p in rows], "hash": [p.hash for p in rows],
                     "width": [p.width for p in rows], "height": [p.height for p in rows]}, schema=schema.STAMPS)


def _probe_images(workers: Workers, uris: list[str], earlier: pa.Table | None, progress: bool,
                  sources: SourceOptions) -> dict[str, Probe]:
    """Every image's hash and size: taken from `earlier` where its file's stamp is unchanged, read and
    hashed by the workers where not. Each file is looked at once (a tar shard or a table holds many
    images), before any image is read, so a file changed meanwhile is read again next time."""
    files = [file_of(uri) for uri in uris]
    now = _stamp_files(workers, list(dict.fromkeys(files)), sources)
    probes = _trusted(uris, files, now, earlier) if earlier is not None and earlier.num_rows else {}
    unread = [uri for uri in uris if uri not in probes]
    batches = [unread[i:i + PROBE_BATCH] for i in range(0, len(unread), PROBE_BATCH)]
    with tqdm(total=len(unread), desc="hashing images", unit="img", disable=not progress) as bar:
        for future in workers.as_completed(workers.client.map(probe_many, batches, pure=False,
                                                              source_options=sources)):
            for found in future.result():
                probes[found.uri] = dataclasses.replace(found, stamp=now[file_of(found.uri)])
                bar.update()
    return probes


def _stamp_files(workers: Workers, files: list[str], sources: SourceOptions) -> dict[str, str | None]:
    """Each file's stamp: here for a few (the tar shards or tables of a source), by the workers for many.
    The first is always looked at here: a filesystem refusing us ends the run in one line, before any task."""
    if len(files) <= STAMP_BATCH:
        return dict(zip(files, stamp_many(files, sources)))
    stamps = dict(zip(files[:1], stamp_many(files[:1], sources)))
    batches = [files[i:i + STAMP_BATCH] for i in range(1, len(files), STAMP_BATCH)]
    futures = workers.client.map(stamp_many, batches, pure=False, source_options=sources)
    batch_of = dict(zip(futures, batches))
    for future in workers.as_completed(futures):
        stamps.update(zip(batch_of[future], future.result()))
    return stamps


def _trusted(uris: list[str], files: list[str], now: dict[str, str | None], earlier: pa.Table) -> dict[str, Probe]:
    """Probes for the images whose file has the stamp it had when `earlier` was recorded."""
    where = pc.index_in(pa.array(uris, pa.string()), value_set=earlier["uri"])
    seen = earlier["stamp"].take(where)
    same = pc.equal(seen, pa.array([now[f] for f in files], pa.string())).fill_null(False)
    keep = np.flatnonzero(same.to_numpy(zero_copy_only=False))
    rows = earlier.take(where.take(pa.array(keep)))
    columns = [rows[c].to_pylist() for c in ("uri", "hash", "width", "height", "stamp")]
    return {uri: Probe(uri, h, w, ht, stamp=s, trusted=True) for uri, h, w, ht, s in zip(*columns)}


def _require_some_image(probes: dict[str, Probe]) -> None:
    """A source none of whose images can be read is a mistake (a wrong --images-root, most often):
    refused before the dataset is registered, so the fixed command can register it."""
    if probes and all(p.hash is None for p in probes.values()):
        first = next(iter(probes.values()))
        raise InvalidSourceError(f"none of the {len(probes)} images could be read (first: {first.uri}: "
                                 f"{first.message}); check --images-root")


def dataset_tables(raw: RawDataset, probes: dict[str, Probe]) -> dict[str, pa.Table]:
    """Items referring to content by hash, the unique images and texts, and the read errors (built a
    column at a time: a million items take seconds)."""
    unique: dict[str, Probe] = {}  # by hash, in first-mention order
    for uri in raw.image_uris():
        found = probes[uri]
        if found.hash is not None:
            unique.setdefault(found.hash, found)
    image = {uri: found.hash for uri, found in probes.items()}
    text = {t: text_hash(t) for t in raw.texts()}  # every caption, negative and segment
    failed = [p for p in probes.values() if p.hash is None]
    items = raw.items
    return {
        "items": pa.table({
            "item_id": [it.item_id for it in items], "subset": [it.subset for it in items],
            "type": [it.type for it in items], "subtype": [it.subtype for it in items],
            "split": [it.split for it in items], "image": [image[it.image] for it in items],
            "caption": [text[it.caption] for it in items],
            "negative_captions": [[text[t] for t in it.negative_captions] for it in items],
            "negative_images": [[h for h in map(image.get, it.negative_images) if h is not None] for it in items],
            "url": [it.url for it in items], "key": [it.key for it in items],
        }, schema=schema.ITEMS),
        "images": pa.table({
            "hash": list(unique), "uri": [p.uri for p in unique.values()], "width": [p.width for p in unique.values()],
            "height": [p.height for p in unique.values()], "boxes": [raw.boxes.get(p.uri) for p in unique.values()],
        }, schema=schema.DATASET_IMAGES),
        "texts": pa.table({"hash": list(text.values()), "text": list(text),
                           "segments": [raw.segments.get(t) for t in text]}, schema=schema.DATASET_TEXTS),
        "errors": pa.table({
            "source": [p.uri for p in failed] + [where for where, _ in raw.skipped],
            "stage": [p.stage for p in failed] + ["source"] * len(raw.skipped),
            "message": [p.message for p in failed] + [why for _, why in raw.skipped],
        }, schema=schema.ERRORS),
    }


def _present(space: SpaceWriter, kind: str, dataset: DatasetTables) -> int:
    content = dataset.images if kind == "images" else dataset.texts
    return space.lookup(kind, content["hash"]).num_rows


def _encode(workers: Workers, space: SpaceWriter, spec: EmbeddingSpace, cluster: ClusterConfig,
            options: ExtractOptions, sources: SourceOptions) -> list[ShardResult]:
    """Run every planned shard that has not committed; workers load weights and tokenizer from where
    `spec` (described here) found them."""
    plans = {kind: space.pending_work(kind) for kind in ("images", "texts")}
    tasks = [ShardTask(space.location, space.key, kind, shard, rows, pretrained_of(spec), spec.tokenizer_path,
                       options.device, options.batch_size, cluster.torch_threads(), options.decode_processes,
                       cluster.cores_per_worker(), sources)
             for kind in ("images", "texts") for shard, rows in plans[kind]]
    results: list[ShardResult] = []
    total = sum(t.rows.num_rows for t in tasks)
    with tqdm(total=total, desc="encoding", unit="row", disable=not options.progress or not tasks) as bar:
        futures = workers.client.map(run_shard, tasks, pure=False)
        try:
            for future in workers.as_completed(futures):
                try:
                    result = future.result()
                except Exception as exc:  # the worker's exception, re-raised here
                    raise ShardFailedError(
                        f"encoding failed ({type(exc).__name__}: {exc}); committed shards are kept, rerun to resume"
                    ) from exc
                results.append(result)
                bar.update(result.rows)
        finally:
            if workers.client.status == "running":
                workers.client.cancel(futures)
    return results
