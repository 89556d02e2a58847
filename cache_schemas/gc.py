"""Rows no dataset refers to any more (after `cache rm` or `--replace`): counted, and collected on
request a whole shard at a time. Rows that share a shard with needed rows stay: shards are written
whole and never rewritten. Counting streams the space's rows against the datasets' hashes in Arrow."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import tables
from .embeddings import SpaceEmbeddings
from .layout import KINDS, Kind
from .store import Store


@dataclass
class Garbage:
    space: str
    unreferenced: dict[Kind, int] = field(default_factory=dict)  # committed rows no dataset refers to
    shards: dict[Kind, list[int]] = field(default_factory=dict)  # committed shards none of whose rows is needed


def referenced(store: Store) -> dict[Kind, pa.Array]:
    """Every content hash some dataset refers to, once each."""
    needed: dict[Kind, list[pa.ChunkedArray]] = {"images": [], "texts": []}
    for name in store.dataset_names():
        dataset = store.dataset(name)
        needed["images"].append(dataset.images["hash"])
        needed["texts"].append(dataset.texts["hash"])
    return {kind: pc.unique(pa.chunked_array([c for a in arrays for c in a.chunks], tables.HASH).combine_chunks())
            for kind, arrays in needed.items()}


def find_garbage(space: SpaceEmbeddings, needed: dict[Kind, pa.Array]) -> Garbage:
    garbage = Garbage(space.key)
    for kind in KINDS:
        unreferenced, shards, kept = 0, set(), set()
        for batch in space.ledger.row_batches(kind, ["hash", "row", "error"]):  # failed rows too: a shard
            wanted = pc.is_in(batch["hash"], value_set=needed[kind]).to_numpy(zero_copy_only=False)  # is free
            encoded = pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)  # only if nothing in it is needed
            unreferenced += int((encoded & ~wanted).sum())
            in_shard = space.geometry.shard_of(batch["row"].to_numpy())
            shards.update(np.unique(in_shard).tolist())
            kept.update(np.unique(in_shard[wanted]).tolist())
        garbage.unreferenced[kind] = unreferenced
        garbage.shards[kind] = sorted(shards - kept)
    return garbage


def collect(store: Store, key: str) -> tuple[Garbage, int]:
    """Drop the space's shards no dataset needs; return what was found and the bytes freed. Holds the
    space's lease, and looks again once it holds it: a dataset registered meanwhile keeps its rows."""
    found = store.space(key)
    with store.space_writer(found.spec, found.geometry, "vlcache cache gc --collect") as space:
        garbage = find_garbage(space, referenced(store))
        freed = sum(space.drop_shard(kind, shard) for kind in KINDS for shard in garbage.shards[kind])
        space.compact()
    return garbage, freed
