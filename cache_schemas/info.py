"""`describe_store`: what a store holds, as plain data for `vlcache cache info` (text or JSON). The
counts stream each space's rows, a batch at a time, against the datasets' hashes held as 64-bit
prefixes (`hashes.HashSet`): 8 bytes a dataset row, nothing per stored row. Two different hashes
sharing a prefix would count one row twice: about one in 10^5 at 10^7 hashes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .gc import dataset_hashes, referenced
from .hashes import HashSet, as_hashes, prefix_keys
from .layout import KINDS
from .store import Store


def describe_store(store: Store, disk_bytes: bool = False) -> dict[str, Any]:
    """`disk_bytes`: also the bytes on disk, which means listing every chunk file (slow on a store with
    a long history); without it, the committed rows' uncompressed bytes, from the index alone."""
    store.require_specs()  # a space that lost its space.json is named, not left out of the summary
    datasets = {name: _dataset(store, name) for name in store.dataset_names()}
    hashes = dataset_hashes(store)
    needed = referenced(store, hashes)
    spaces = {key: _space(store, key, hashes, needed, disk_bytes) for key in store.space_keys()}
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
    counts = dataset.manifest["counts"]
    subsets = sorted(pc.unique(dataset.column("items", "subset")).to_pylist())
    return {"items": counts["items"], "images": counts["images"], "texts": counts["texts"],
            "read_errors": counts["read_errors"], "subsets": subsets, "source": dataset.manifest["source"]}


def _space(store: Store, key: str, datasets: dict[str, dict[str, HashSet]], needed: dict[str, HashSet],
           disk_bytes: bool) -> dict[str, Any]:
    space = store.space(key)
    counts = {kind: {"rows": 0, "encoded": 0, "failed": 0, "unreferenced": 0, "tokens": 0} for kind in KINDS}
    covered = {name: {kind: 0 for kind in KINDS} for name in datasets}
    for kind in KINDS:
        columns = ["hash", "error"] + (["n_tokens"] if kind == "texts" else [])
        for batch in space.ledger.row_batches(kind, columns):
            encoded = batch.filter(pc.is_null(batch["error"]))
            hashes, keys = encoded["hash"], prefix_keys(as_hashes(encoded["hash"]))  # once, for every set
            order = np.argsort(keys, kind="stable")  # sorted once: each set's search then runs in order
            hashes, keys = hashes.take(pa.array(order)), keys[order]
            count = counts[kind]
            count["rows"] += batch.num_rows
            count["encoded"] += encoded.num_rows
            count["failed"] += batch.num_rows - encoded.num_rows
            count["unreferenced"] += encoded.num_rows - int(needed[kind].contains(hashes, keys).sum())
            count["tokens"] += int(pc.sum(batch["n_tokens"]).as_py() or 0) if kind == "texts" else 0
            for name, sets in datasets.items():
                covered[name][kind] += int(sets[kind].contains(hashes, keys).sum())
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
