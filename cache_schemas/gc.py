"""Rows no dataset refers to any more (after `cache rm` or `--replace`): counted, and collected on
request a whole shard at a time. Rows that share a shard with needed rows stay: shards are written
whole and never rewritten."""

from __future__ import annotations

from dataclasses import dataclass, field

from .embeddings import SpaceEmbeddings
from .layout import KINDS, Kind
from .store import Store


@dataclass
class Garbage:
    space: str
    unreferenced: dict[Kind, int] = field(default_factory=dict)  # committed rows no dataset refers to
    shards: dict[Kind, list[int]] = field(default_factory=dict)  # committed shards none of whose rows is needed


def referenced(store: Store) -> dict[Kind, set[str]]:
    """Every content hash some dataset refers to."""
    needed: dict[Kind, set[str]] = {"images": set(), "texts": set()}
    for name in store.dataset_names():
        dataset = store.dataset(name)
        needed["images"] |= set(dataset.images["hash"].to_pylist())
        needed["texts"] |= set(dataset.texts["hash"].to_pylist())
    return needed


def find_garbage(space: SpaceEmbeddings, needed: dict[Kind, set[str]]) -> Garbage:
    garbage = Garbage(space.key)
    for kind in KINDS:
        garbage.unreferenced[kind] = sum(h not in needed[kind] for h in space.view(kind)["hash"].to_pylist())
        rows = space.committed_rows(kind)  # failed rows too: a shard is free only if nothing in it is needed
        shards = rows["row"].to_numpy() // space.geometry.rows_per_shard
        kept = {int(s) for s, h in zip(shards, rows["hash"].to_pylist()) if h in needed[kind]}
        garbage.shards[kind] = sorted(set(shards.tolist()) - kept)
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
