"""`extract`: read a source, register it as a dataset, and encode what the space lacks.

    source --reader--> RawDataset --probe (Dask)--> dataset tables (content by hash)
           --plan--> rows for new content --run_shard (Dask)--> arrays + commit records

Every stage before the encoder pass is cheap and repeatable; the encoder pass runs each planned,
uncommitted shard exactly once."""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

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

from .cluster import ClusterConfig, Workers, start_workers
from .encoders import EncoderRequest, describe, tokenizer_for
from .encoders.base import pretrained_of
from .images import Known, Probe, probe_many
from .plan import plan_new_content
from .readers import RawDataset, ReaderOptions, read_source
from .shards import ShardResult, ShardTask, run_shard

PROBE_BATCH = 256


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
            workers: Workers | None = None, reader: ReaderOptions = ReaderOptions()) -> Summary:
    """`workers`: started workers to reuse (several extractions, one cluster start); `cluster` describes them.
    `reader`: column names and separator of tabular sources."""
    started = time.perf_counter()
    raw = read_source(source, fmt, images_root, split, reader)  # user mistakes surface before any cluster starts
    spec = describe(encoder)
    cluster = cluster.for_device(gpu=_encodes_on_gpu(options.device))
    # The cluster starts before the store is touched: a cluster that cannot start writes nothing.
    with nullcontext(workers) if workers else start_workers(cluster) as workers:
        losses_before = workers.lost, workers.reassigned  # workers may serve several extractions
        store = open_store(store_uri, mode="a", storage_options=storage_options)
        uris = raw.image_uris()
        known = None if options.rehash else _known_probes(store, dataset, uris)
        probes = _probe_images(workers, uris, known, options.progress)
        _require_some_image(probes)
        tables = dataset_tables(raw, probes)
        registered = store.register_dataset(dataset, **tables, source={"uri": os.path.abspath(source), "format": fmt},
                                            replace=options.replace, stamps=_stamps(probes))
        geometry = Geometry.for_shard_rows(options.rows_per_shard)
        with store.space_writer(spec, geometry, f"vlcache extract --dataset {dataset}", wait=options.wait,
                                on_wait=lambda message: print(message, file=sys.stderr)) as space:
            present = {k: _present(space, k, registered) for k in ("images", "texts")}
            interrupted = {k: set(space.pending_shards(k)) for k in ("images", "texts")}
            plan_new_content(space, registered, tokenizer_for(spec).count, retry_failed=options.retry_failed)
            # Workers get the weights as found here (a checkpoint's absolute path): their folder may not be ours.
            results = _encode(workers, space, spec, cluster, options)
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


def _known_probes(store, dataset: str, uris: list[str]) -> list[Known | None] | None:
    """What the dataset's last run probed of each of these files (its stamps), by URI."""
    if dataset not in store.dataset_names():
        return None
    stamps = store.dataset(dataset).stamps
    if not stamps.num_rows:
        return None
    where = pc.index_in(pa.array(uris, pa.string()), value_set=stamps["uri"]).fill_null(-1).to_numpy()
    columns = [stamps[c].to_pylist() for c in ("stamp", "hash", "width", "height")]
    return [Known(*(c[i] for c in columns)) if i >= 0 else None for i in where.tolist()]


def _stamps(probes: dict[str, Probe]) -> pa.Table:
    rows = [p for p in probes.values() if p.hash is not None and p.stamp is not None]
    return pa.table({"uri": [p.uri for p in rows], "stamp": [p.stamp for p in rows], "hash": [p.hash for p in rows],
                     "width": [p.width for p in rows], "height": [p.height for p in rows]}, schema=schema.STAMPS)


def _probe_images(workers: Workers, uris: list[str], known: list[Known | None] | None,
                  progress: bool) -> dict[str, Probe]:
    batches = [uris[i:i + PROBE_BATCH] for i in range(0, len(uris), PROBE_BATCH)]
    priors = [known[i:i + PROBE_BATCH] if known else None for i in range(0, len(uris), PROBE_BATCH)]
    probes: dict[str, Probe] = {}
    with tqdm(total=len(uris), desc="hashing images", unit="img", disable=not progress) as bar:
        for future in workers.as_completed(workers.client.map(probe_many, batches, priors, pure=False)):
            found = future.result()
            probes.update((p.uri, p) for p in found)
            bar.update(len(found))
    return probes


def _require_some_image(probes: dict[str, Probe]) -> None:
    """A source none of whose images can be read is a mistake (a wrong --images-root, most often):
    refused before the dataset is registered, so the fixed command can register it."""
    if probes and all(p.hash is None for p in probes.values()):
        first = next(iter(probes.values()))
        raise InvalidSourceError(f"none of the {len(probes)} images could be read (first: {first.uri}: "
                                 f"{first.message}); check --images-root")


def dataset_tables(raw: RawDataset, probes: dict[str, Probe]) -> dict[str, pa.Table]:
    """Items referring to content by hash, the unique images and texts, and the read errors."""
    image_rows: dict[str, dict] = {}
    for uri in raw.image_uris():
        p = probes[uri]
        if p.hash is not None and p.hash not in image_rows:
            image_rows[p.hash] = {"hash": p.hash, "uri": uri, "width": p.width, "height": p.height,
                                  "boxes": raw.boxes.get(uri)}
    texts = [{"hash": text_hash(t), "text": t, "segments": raw.segments.get(t)} for t in raw.texts()]
    errors = [{"source": p.uri, "stage": p.stage, "message": p.message} for p in probes.values() if p.hash is None]
    errors += [{"source": where, "stage": "source", "message": why} for where, why in raw.skipped]

    def image(uri: str) -> str | None:
        return probes[uri].hash

    items = [{
        "item_id": it.item_id, "subset": it.subset, "type": it.type, "subtype": it.subtype, "split": it.split,
        "image": image(it.image), "caption": text_hash(it.caption),
        "negative_captions": [text_hash(t) for t in it.negative_captions],
        "negative_images": [h for h in map(image, it.negative_images) if h is not None],
    } for it in raw.items]
    return {
        "items": pa.Table.from_pylist(items, schema=schema.ITEMS),
        "images": pa.Table.from_pylist(list(image_rows.values()), schema=schema.DATASET_IMAGES),
        "texts": pa.Table.from_pylist(texts, schema=schema.DATASET_TEXTS),
        "errors": pa.Table.from_pylist(errors, schema=schema.ERRORS),
    }


def _present(space: SpaceWriter, kind: str, dataset: DatasetTables) -> int:
    content = dataset.images if kind == "images" else dataset.texts
    return space.lookup(kind, content["hash"]).num_rows


def _encode(workers: Workers, space: SpaceWriter, spec: EmbeddingSpace, cluster: ClusterConfig,
            options: ExtractOptions) -> list[ShardResult]:
    """Run every planned shard that has not committed; workers load weights and tokenizer from where
    `spec` (described here) found them."""
    plans = {kind: space.pending_work(kind) for kind in ("images", "texts")}
    tasks = [ShardTask(space.location, space.key, kind, shard, rows, pretrained_of(spec), spec.tokenizer_path,
                       options.device, options.batch_size, cluster.torch_threads(), options.decode_processes,
                       cluster.cores_per_worker())
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
