"""`describe_store`: what a store holds, as plain data for `vlcache cache info` (text or JSON)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .gc import referenced
from .store import Store


def describe_store(store: Store, disk_bytes: bool = False) -> dict[str, Any]:
    """`disk_bytes`: also the bytes on disk, which means listing every chunk file (slow on a store with
    a long history); without it, the committed rows' uncompressed bytes, from the index alone."""
    datasets = {name: _dataset(store, name) for name in store.dataset_names()}
    spaces = {key: _space(store, key, disk_bytes) for key in store.space_keys()}
    unique_images, unique_texts = set(), set()
    for name in datasets:
        unique_images |= set(store.dataset(name).images["hash"].to_pylist())
        unique_texts |= set(store.dataset(name).texts["hash"].to_pylist())
    return {
        "store": store.location.uri,
        "schema_version": store.manifest["schema_version"],
        "unique": {"items": sum(d["items"] for d in datasets.values()),
                   "images": len(unique_images), "texts": len(unique_texts)},
        "datasets": datasets,
        "spaces": spaces,
    }


def _dataset(store: Store, name: str) -> dict[str, Any]:
    dataset = store.dataset(name)
    return {"items": dataset.items.num_rows, "images": dataset.images.num_rows,
            "texts": dataset.texts.num_rows, "read_errors": dataset.errors.num_rows,
            "subsets": sorted(set(dataset.items["subset"].to_pylist())), "source": dataset.manifest["source"]}


def _count_in(values: pa.ChunkedArray, value_set: pa.Array | pa.ChunkedArray) -> int:
    """How many of `values` are in `value_set`, in Arrow (a space's rows can number millions)."""
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    return int(pc.sum(pc.is_in(values, value_set=value_set)).as_py() or 0)


def _space(store: Store, key: str, disk_bytes: bool) -> dict[str, Any]:
    space = store.space(key)
    hashes = {"images": space.images()["hash"], "texts": space.texts()["hash"]}
    coverage, needed = {}, referenced(store)
    for name in store.dataset_names():
        dataset = store.dataset(name)
        coverage[name] = {"images": _count_in(dataset.images["hash"], hashes["images"]),
                          "texts": _count_in(dataset.texts["hash"], hashes["texts"])}
    unreferenced = {kind: len(hashes[kind]) - _count_in(hashes[kind], pa.array(list(needed[kind]), pa.string()))
                    for kind in hashes}
    committed = space.nbytes_committed()
    on_disk = space.nbytes_stored() if disk_bytes else None
    return {
        "model": space.spec.model,
        "description": space.spec.describe(),
        "spec": space.spec.to_json(),
        "images": len(hashes["images"]),
        "texts": len(hashes["texts"]),
        "failed": space.errors().num_rows,
        "shards": {kind: len(space.committed_shards(kind)) for kind in ("images", "texts")},
        "pending_shards": {kind: len(space.pending_shards(kind)) for kind in ("images", "texts")},
        "bytes": {"committed": {"total": sum(committed.values()), **committed},
                  **({"on_disk": {"total": sum(on_disk.values()), **on_disk}} if on_disk else {})},
        "datasets": coverage,
        # Stored rows no dataset refers to any more (after `cache rm` or `--replace`): kept (reused if a
        # dataset brings that content back) until `vlcache cache gc --collect`.
        "unreferenced": unreferenced,
    }
