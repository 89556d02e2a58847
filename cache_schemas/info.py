"""`describe_store`: what a store holds, as plain data for `vlcache cache info` (text or JSON). The
counts stream the spaces' rows against the datasets' hashes in Arrow: the memory is the datasets'
hashes and one batch, whatever the spaces hold."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .gc import referenced
from .layout import KINDS
from .store import Store


def describe_store(store: Store, disk_bytes: bool = False) -> dict[str, Any]:
    """`disk_bytes`: also the bytes on disk, which means listing every chunk file (slow on a store with
    a long history); without it, the committed rows' uncompressed bytes, from the index alone."""
    datasets = {name: _dataset(store, name) for name in store.dataset_names()}
    needed = referenced(store)
    spaces = {key: _space(store, key, needed, disk_bytes) for key in store.space_keys()}
    return {
        "store": store.location.uri,
        "schema_version": store.manifest["schema_version"],
        "unique": {"items": sum(d["items"] for d in datasets.values()),
                   "images": len(needed["images"]), "texts": len(needed["texts"])},
        "datasets": datasets,
        "spaces": spaces,
    }


def _dataset(store: Store, name: str) -> dict[str, Any]:
    dataset = store.dataset(name)
    return {"items": dataset.items.num_rows, "images": dataset.images.num_rows,
            "texts": dataset.texts.num_rows, "read_errors": dataset.errors.num_rows,
            "subsets": sorted(pc.unique(dataset.items["subset"]).to_pylist()), "source": dataset.manifest["source"]}


def _space(store: Store, key: str, needed: dict[str, pa.Array], disk_bytes: bool) -> dict[str, Any]:
    space = store.space(key)
    names = store.dataset_names()
    wanted = {name: {kind: _hashes(store, name, kind) for kind in KINDS} for name in names}
    counts = {kind: {"rows": 0, "encoded": 0, "failed": 0, "unreferenced": 0, "tokens": 0} for kind in KINDS}
    covered = {name: {kind: 0 for kind in KINDS} for name in names}
    for kind in KINDS:
        columns = ["hash", "error"] + (["n_tokens"] if kind == "texts" else [])
        for batch in space.ledger.row_batches(kind, columns):
            encoded = batch.filter(pc.is_null(batch["error"]))
            count = counts[kind]
            count["rows"] += batch.num_rows
            count["encoded"] += encoded.num_rows
            count["failed"] += batch.num_rows - encoded.num_rows
            count["unreferenced"] += encoded.num_rows - _count_in(encoded["hash"], needed[kind])
            count["tokens"] += int(pc.sum(batch["n_tokens"]).as_py() or 0) if kind == "texts" else 0
            for name in names:
                covered[name][kind] += _count_in(encoded["hash"], wanted[name][kind])
    on_disk = space.nbytes_stored() if disk_bytes else None
    committed = space.nbytes_of({kind: counts[kind]["rows"] for kind in KINDS}, counts["texts"]["tokens"])
    return {
        "model": space.spec.model,
        "description": space.spec.describe(),
        "spec": space.spec.to_json(),
        "images": counts["images"]["encoded"],
        "texts": counts["texts"]["encoded"],
        "failed": counts["images"]["failed"] + counts["texts"]["failed"],
        "shards": {kind: len(space.committed_shards(kind)) for kind in KINDS},
        "pending_shards": {kind: len(space.pending_shards(kind)) for kind in KINDS},
        "bytes": {"committed": {"total": sum(committed.values()), **committed},
                  **({"on_disk": {"total": sum(on_disk.values()), **on_disk}} if on_disk else {})},
        "datasets": covered,
        # Stored rows no dataset refers to any more (after `cache rm` or `--replace`): kept (reused if a
        # dataset brings that content back) until `vlcache cache gc --collect`.
        "unreferenced": {kind: counts[kind]["unreferenced"] for kind in KINDS},
    }


def _hashes(store: Store, name: str, kind: str) -> pa.Array:
    dataset = store.dataset(name)
    return (dataset.images if kind == "images" else dataset.texts)["hash"].combine_chunks()


def _count_in(values: pa.Array | pa.ChunkedArray, value_set: pa.Array) -> int:
    """How many of `values` are in `value_set`, in Arrow."""
    return int(pc.sum(pc.is_in(values, value_set=value_set)).as_py() or 0)

