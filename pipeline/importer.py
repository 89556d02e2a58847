"""`vlcache cache import`: an HDF5 export's dataset and embeddings into a store, by the path extract
writes through (the datasets lease to register; the space's lease; plans for content the space lacks;
whole shards, committed with their checksums by `commit.py`), the file standing where the encoder
stands. No encoder runs, and content the space already holds is not written again.

Everything that can be wrong with the file is found before the store is touched: its layout on
opening (`ExportFile`), then the values of every row the import may write."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cache_schemas import InvalidSpecError, SpaceWriter, StoreNotFoundError, open_store
from cache_schemas.errors import RESUME, disk_full_as_error
from cache_schemas.exchange import FORMAT, ExportFile
from cache_schemas.layout import KINDS, Kind
from cache_schemas.lease import WAIT
from cache_schemas.store import DATASET_NAME

from .commit import commit_image_shard, commit_text_shard
from .plan import plan_new_content


@dataclass
class ImportSummary:
    dataset: str
    space: str
    store: str
    in_file: dict[str, int]  # images and texts the file holds embeddings for
    present: dict[str, int]  # of those, already in the space before the import
    written: dict[str, int]  # rows this import committed
    shards: int  # shards this import committed
    left: int  # pending shards the file cannot fill (planned by an extraction for other content)

    def lines(self) -> list[str]:
        lines = [
            f"imported dataset {self.dataset} into {self.store}, space {self.space}",
            f"wrote {self.written['images']} images and {self.written['texts']} texts in {self.shards} shards "
            f"({self.present['images']} images and {self.present['texts']} texts already present)",
        ]
        if self.left:
            lines.append(f"{self.left} pending shards hold content the file lacks: the next extract encodes them")
        return lines


def import_hdf5(path: str, store_uri: str, dataset: str | None = None, *, replace: bool = False,
                storage_options: dict | None = None, wait: float = WAIT,
                on_wait: Callable[[str], None] | None = None) -> ImportSummary:
    """Register the file's dataset (as `dataset`, default the name in the file) in the store, creating
    it if needed, and write the embeddings the file's space lacks there."""
    with ExportFile.open(path) as export:
        name = dataset or export.dataset
        if not DATASET_NAME.fullmatch(name):
            raise InvalidSpecError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (max 128)")
        present = _committed(store_uri, storage_options, export)
        for kind in KINDS:  # every row that may be written, before anything is
            export.check_values(kind, export.index(kind, sorted(set(export.hashes[kind]) - present[kind])))
        with disk_full_as_error(f"the store at {store_uri}", RESUME):
            written, left = _import(export, name, store_uri, storage_options, replace, wait, on_wait)
    return ImportSummary(
        dataset=name, space=export.spec.key, store=store_uri,
        in_file={kind: len(export.hashes[kind]) for kind in KINDS},
        present={kind: len(set(export.hashes[kind]) & present[kind]) for kind in KINDS},
        written={kind: sum(written[kind].values()) for kind in KINDS},
        shards=sum(len(shards) for shards in written.values()), left=left,
    )


def _import(export: ExportFile, name: str, store_uri: str, storage_options: dict | None, replace: bool, wait: float,
            on_wait: Callable[[str], None] | None) -> tuple[dict[Kind, dict[int, int]], int]:
    """Register the dataset, then write the shards the space lacks (`_write_pending`'s return)."""
    store = open_store(store_uri, mode="a", storage_options=storage_options)
    store.register_dataset(name, **export.tables, source=_source(export), replace=replace)
    with store.space_writer(export.spec, export.geometry, f"vlcache cache import --dataset {name}",
                            wait=wait, on_wait=on_wait) as space:
        # retry_failed: content the space failed to encode is lacking, and the file has its numbers
        plan_new_content(space, export.content(), export.count_tokens, retry_failed=True)
        written, left = _write_pending(space, export)
        for kind in KINDS:
            space.committed_by_workers(kind, list(written[kind]))
        if sum(len(shards) for shards in written.values()):
            space.compact()  # as extract does: the next reader opens segments, not parts
    return written, left


def _committed(store_uri: str, storage_options: dict | None, export: ExportFile) -> dict[Kind, set[str]]:
    """Content the file's space already holds in the store, read without a lease (as any reader): the
    rows the import will not write, so not the rows whose values it must check first."""
    try:
        store = open_store(store_uri, storage_options=storage_options)
    except StoreNotFoundError:
        return {kind: set() for kind in KINDS}
    if export.spec.key not in store.space_keys():
        return {kind: set() for kind in KINDS}
    space = store.space(export.spec.key)
    return {kind: set(space.lookup(kind, export.hashes[kind])["hash"].to_pylist()) for kind in KINDS}


def _source(export: ExportFile) -> dict[str, Any]:
    return {"uri": os.path.abspath(export.path), "format": FORMAT, "exported_from": export.source}


def _write_pending(space: SpaceWriter, export: ExportFile) -> tuple[dict[Kind, dict[int, int]], int]:
    """Write every pending shard the file has all the content of; return {kind: {shard: rows}} written
    and how many pending shards were left. A pending shard planned by an interrupted import is
    resumed here; one planned by an extraction for content the file lacks is left for extract."""
    written: dict[Kind, dict[int, int]] = {kind: {} for kind in KINDS}
    left = 0
    for kind in KINDS:
        for shard, rows in space.pending_work(kind):
            index = export.index(kind, rows["hash"].to_pylist())
            if (index < 0).any():
                left += 1
                continue
            write = _write_images if kind == "images" else _write_texts
            if write(space, export, shard, rows, index):
                written[kind][shard] = rows.num_rows
            else:
                left += 1
    return written, left


def _write_images(space: SpaceWriter, export: ExportFile, shard: int, rows: pa.Table, index: np.ndarray) -> bool:
    arrays = {name: export.read(name, index) for name in space.arrays("images")}
    for name, block in arrays.items():
        export.check_block(name, "images", index, block)
    commit_image_shard(space, shard, rows, arrays, [None] * rows.num_rows)
    return True


def _write_texts(space: SpaceWriter, export: ExportFile, shard: int, rows: pa.Table, index: np.ndarray) -> bool:
    """False when the shard's planned token counts are not the file's (an extraction planned it with a
    tokenizer that counts otherwise): extract encodes it instead."""
    tokens, lengths = export.read_tokens(index)
    if not np.array_equal(lengths, rows["n_tokens"].to_numpy()):
        return False
    # plan.py packs a shard's tokens from its first token row in row order, so the file's tokens, read
    # in row order, are the shard's token block as they are.
    starts = rows["offset"].to_numpy() - space.token_base(shard)
    if not np.array_equal(starts, np.concatenate([[0], np.cumsum(lengths)[:-1]])):
        raise RuntimeError(f"text shard {shard}: the plan's offsets do not pack its tokens")
    pooled = export.read("text_global", index)
    export.check_block("text_tokens", "texts", index, tokens, lengths)
    export.check_block("text_global", "texts", index, pooled)
    commit_text_shard(space, shard, rows, tokens, pooled)
    return True
