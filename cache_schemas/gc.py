"""Rows no dataset refers to any more (after `cache rm` or `--replace`): counted, and collected on
request a whole shard at a time. Rows that share a shard with needed rows stay: shards are written
whole and never rewritten. Counting streams the space's rows against the datasets' hashes in Arrow."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from .embeddings import SpaceEmbeddings
from .hashes import HashSet
from .layout import KINDS, Kind
from .store import Store


@dataclass
class Garbage:
    space: str
    unreferenced: dict[Kind, int] = field(default_factory=dict)  # committed rows no dataset refers to
    shards: dict[Kind, list[int]] = field(default_factory=dict)  # committed shards none of whose rows is needed


def dataset_hashes(store: Store) -> dict[str, dict[Kind, HashSet]]:
    """Each dataset's images and texts, as prefix sets (8 bytes a hash), read a column at a time."""
    return {name: {kind: HashSet(store.dataset(name).column(kind, "hash"), exact=False) for kind in KINDS}
            for name in store.dataset_names()}


def referenced(store: Store, datasets: dict[str, dict[Kind, HashSet]] | None = None) -> dict[Kind, HashSet]:
    """Every content hash some dataset refers to, as a prefix set: a collision of 64-bit prefixes can
    only keep a row that could have gone, never drop one a dataset needs."""
    datasets = dataset_hashes(store) if datasets is None else datasets
    return {kind: HashSet.union(sets[kind] for sets in datasets.values()) for kind in KINDS}


def find_garbage(space: SpaceEmbeddings, needed: dict[Kind, HashSet]) -> Garbage:
    garbage = Garbage(space.key)
    for kind in KINDS:
        unreferenced, shards, kept = 0, set(), set()
        for batch in space.ledger.row_batches(kind, ["hash", "row", "error"]):  # failed rows too: a shard
            wanted = needed[kind].contains(batch["hash"])  # is free
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
