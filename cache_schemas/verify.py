"""`verify`: read every metadata file and re-read every committed shard, checking it against its commit
record. Each problem is one line, and checking goes on past it: a damaged store is listed, never a crash."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import lease
from .embeddings import SpaceEmbeddings, checksum
from .errors import DamagedMetadataError, VlcacheError
from .layout import KINDS, SPACE_SPEC, Kind, dataset_dir, index_path, part_path, space_dir
from .ledger import PLAN_SCHEMAS
from .location import Location
from .store import DatasetTables, Store, open_store

ROW = pa.schema([pa.field("row", pa.int64(), nullable=False)])  # a part's and a segment's row column
DATASET_TABLES = ("items", "images", "texts", "errors")  # a dataset's content (stamps: a cache of its source)


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)
    damaged: list[str] = field(default_factory=list)  # metadata files missing or unreadable: `repair`'s work

    @property
    def ok(self) -> bool:
        return not self.problems

    def metadata(self, exc: DamagedMetadataError) -> None:
        self.problems.append(f"{exc.path} {exc.why}")
        self.damaged.append(exc.path)


def verify_at(uri: str, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """`verify` of the store at `uri`, also when its `vlcache.json` is damaged (listed with the rest)."""
    try:
        store = open_store(uri, storage_options=storage_options)
    except DamagedMetadataError:  # open_store reads vlcache.json alone: verify reports it
        store = Store(Location(str(uri), storage_options or {}), writable=False)
    return verify(store)


def verify(store: Store) -> VerifyReport:
    report = VerifyReport()
    try:
        store.manifest  # noqa: B018 (read to check it)
    except DamagedMetadataError as exc:
        report.metadata(exc)
    for path in store.location.partials(older_than=lease.TTL):
        report.problems.append(f"{path} was left by a write cut short; vlcache cache repair removes it (so does the "
                               "next writer of its space or datasets, unless it lies beside an indexed shard)")
    for name in store.location.listdir("locks"):
        for exc in lease.damaged_records(store.location, name).values():  # a writer takes over them: repair removes
            report.metadata(exc)
    for name in store.dataset_names():
        _verify_dataset(store, name, report)
    for key in store.specless_spaces():
        report.metadata(store.location.missing(f"{space_dir(key)}/{SPACE_SPEC}", "is missing (the space has "
                                               "commit records)"))
    for key in store.space_keys():
        try:
            space = store.space(key)
        except DamagedMetadataError as exc:
            report.metadata(exc)
            continue
        except VlcacheError as exc:
            report.problems.append(f"space {key}: {exc}")
            continue
        for kind in KINDS:
            _verify_kind(space, kind, report)
    return report


def _verify_dataset(store: Store, name: str, report: VerifyReport) -> None:
    try:
        dataset = store.dataset(name)
    except DamagedMetadataError as exc:
        report.metadata(exc)
        dataset = DatasetTables(store.location, name, {})  # its tables still checked: the manifest is rebuilt from them
    read = {}
    for table in DATASET_TABLES:
        try:
            read[table] = getattr(dataset, table)
        except DamagedMetadataError as exc:
            report.metadata(exc)
        except (VlcacheError, OSError) as exc:
            report.problems.append(f"dataset {name}: {exc}")
    stamps = f"{dataset_dir(name)}/stamps.parquet"
    if store.location.exists(stamps):
        try:
            store.location.read_parquet(stamps)
        except DamagedMetadataError as exc:
            report.metadata(exc)
    if len(read) < len(DATASET_TABLES):
        return
    items, images, texts = read["items"], read["images"], read["texts"]
    image_hashes, text_hashes = set(images["hash"].to_pylist()), set(texts["hash"].to_pylist())
    referenced_images = set(items["image"].drop_null().to_pylist())
    referenced_images |= set(pc.list_flatten(items["negative_images"]).to_pylist())
    referenced_texts = set(items["caption"].to_pylist()) | set(pc.list_flatten(items["negative_captions"]).to_pylist())
    for what, missing in (("images", referenced_images - image_hashes), ("texts", referenced_texts - text_hashes)):
        if missing:
            report.problems.append(f"dataset {name}: items refer to {len(missing)} {what} not in its {what} table")
    report.checked["datasets"] += 1
    report.checked["items"] += items.num_rows


def _verify_kind(space: SpaceEmbeddings, kind: Kind, report: VerifyReport) -> None:
    where = f"space {space.key} {kind}"
    for exc in plan_damage(space, kind) + index_damage(space, kind):
        report.metadata(exc)
    seen: list[pa.Array] = []  # encoded hashes, in Arrow: counted for copies at the end
    listed = space.listed_shards(kind)
    for shard in listed:  # every part file, whatever the index says
        try:
            part, meta = space.part(kind, shard)
        except DamagedMetadataError as exc:
            report.metadata(exc)
            continue
        except (VlcacheError, OSError) as exc:  # the filesystem's own errors
            report.problems.append(f"{where} shard {shard}: unreadable commit record ({exc})")
            continue
        rows = part["row"].to_numpy()
        owned = space.geometry.shard_rows(shard)
        if rows.size and (rows.min() < owned.start or rows.max() >= owned.stop):
            report.problems.append(f"{where} shard {shard}: rows outside the shard's range")
            continue
        seen.extend(part.filter(pc.is_null(part["error"]))["hash"].chunks)  # a retried failure is not a copy
        for name, expected in meta["checksums"].items():
            try:
                block = committed_block(space, kind, name, part, meta)
            except Exception as exc:  # a missing or corrupt Zarr shard surfaces as many error types
                report.problems.append(f"{where} shard {shard}: {name} unreadable ({type(exc).__name__}: {exc})")
                continue
            if checksum(block) != expected:
                report.problems.append(f"{where} shard {shard}: {name} does not match its checksum")
        report.checked[f"{kind} shards"] += 1
        report.checked[f"{kind} rows"] += len(rows)
    for shard in unrecorded_shards(space, kind, listed):
        report.metadata(space.location.missing(part_path(space.key, kind, shard),
                                               f"is missing (the index covers shard {shard})"))
    counts = pc.value_counts(pa.chunked_array(seen, pa.string()).combine_chunks()).field("counts")
    duplicated = int(pc.sum(pc.greater(counts, 1)).as_py() or 0)
    if duplicated:
        report.problems.append(f"{where}: {duplicated} content hashes stored more than once")


def plan_damage(space: SpaceEmbeddings, kind: Kind) -> list[DamagedMetadataError]:
    """Plan files that cannot be read whole (footer and rows)."""
    found = []
    for name in space.location.listdir(f"{space_dir(space.key)}/plans"):
        if name.startswith(f"{kind}-") and name.endswith(".parquet"):
            rel = f"{space_dir(space.key)}/plans/{name}"
            try:
                space.ledger.plan_file(rel)
                for _ in space.ledger.batches(rel, PLAN_SCHEMAS[kind], "plan"):
                    pass
            except DamagedMetadataError as exc:
                found.append(exc)
    return found


def index_damage(space: SpaceEmbeddings, kind: Kind) -> list[DamagedMetadataError]:
    """The index's manifest and segments that cannot be read, or do not hold the rows the manifest lists."""
    try:
        segments = space.ledger.segments(kind)
    except DamagedMetadataError as exc:
        return [exc]
    found = []
    for segment in segments:
        rows, shards = 0, set()
        try:
            for batch in space.ledger.batches(segment.rel, ROW, "index segment"):
                rows += batch.num_rows
                shards.update(np.unique(space.geometry.shard_of(batch["row"].to_numpy())).tolist())
        except DamagedMetadataError as exc:
            found.append(exc)
            continue
        legacy = segment.rel == index_path(space.key, kind)  # holds rows of shards it no longer covers
        if not legacy and (rows != segment.rows or not shards <= segment.shards):
            found.append(space.location.damaged(segment.rel, f"holds {rows} rows of {len(shards)} shards, not the "
                                                f"{segment.rows} rows of the shards the index lists"))
    return found


def unrecorded_shards(space: SpaceEmbeddings, kind: Kind, listed: list[int]) -> list[int]:
    """Shards the index covers whose commit record is gone (reads still find their rows in the index)."""
    try:
        covered = space.indexed_shards(kind) or set()
    except DamagedMetadataError:  # reported by index_damage
        return []
    return sorted(covered - set(listed))


def committed_block(space: SpaceEmbeddings, kind: str, name: str, part: pa.Table, meta: dict) -> np.ndarray:
    """The block of array `name` a commit record's checksum covers."""
    array = space.array(name)
    if space.layouts[name].ragged:
        start, stop = meta["token_rows"]
        return array[start:stop]
    rows = part["row"].to_numpy()
    return array[int(rows.min()):int(rows.max()) + 1] if rows.size else array[0:0]
