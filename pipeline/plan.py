"""Dedup and row assignment: which content a space still needs, and where each piece goes.

A plan is written (exclusively) before any encoding, so a rerun after a crash finds the same rows
for the same content and recomputes only the shards that never committed. The caller holds the
space's writer lease: what is new and where it goes are decided from one reading of the plans."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from cache_schemas import DatasetTables, SpaceEmbeddings
from cache_schemas.layout import Kind

Tokenize = Callable[[Sequence[str]], np.ndarray]  # texts -> count of real tokens per text


def plan_new_content(space: SpaceEmbeddings, dataset: DatasetTables, count_tokens: Tokenize,
                     retry_failed: bool = False) -> dict[Kind, int]:
    """Write plans for the dataset's content the space has neither encoded nor planned; return how
    many images and texts were newly planned."""
    plans = {kind: space.plan(kind) for kind in ("images", "texts")}
    new = {"images": _new_rows(space, "images", plans["images"], dataset.images, retry_failed),
           "texts": _new_rows(space, "texts", plans["texts"], dataset.texts, retry_failed)}
    if new["images"].num_rows:
        images = new["images"].select(["hash", "uri", "width", "height"])
        _write(space, "images", _assign_rows(space, plans["images"], images))
    if new["texts"].num_rows:
        texts = new["texts"].select(["hash", "text"])
        n_tokens = count_tokens(texts["text"].to_pylist()).astype(np.int32)
        planned = _assign_rows(space, plans["texts"], texts.append_column("n_tokens", pa.array(n_tokens)))
        _write(space, "texts", _assign_offsets(space, planned))
    return {kind: table.num_rows for kind, table in new.items()}


def _new_rows(space: SpaceEmbeddings, kind: Kind, plan: pa.Table, content: pa.Table, retry_failed: bool) -> pa.Table:
    known = set(plan["hash"].to_pylist())
    if retry_failed:
        known -= space.failed_hashes(kind) - set(space.view(kind)["hash"].to_pylist())
    keep = np.fromiter((h not in known for h in content["hash"].to_pylist()), dtype=bool, count=content.num_rows)
    return content.filter(pa.array(keep))


def _assign_rows(space: SpaceEmbeddings, plan: pa.Table, table: pa.Table) -> pa.Table:
    """Consecutive rows from the first shard no plan has claimed: a new plan never shares a Zarr
    shard with committed data, so committed shards are never rewritten."""
    start = space.next_free_shard(plan) * space.geometry.rows_per_shard
    return table.append_column("row", pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)))


def _assign_offsets(space: SpaceEmbeddings, plan: pa.Table) -> pa.Table:
    """Pack each shard's texts' tokens contiguously from the shard's first token row."""
    rows, n_tokens = plan["row"].to_numpy(), plan["n_tokens"].to_numpy().astype(np.int64)
    shards = rows // space.geometry.rows_per_shard
    offsets = np.empty_like(rows)
    for shard in np.unique(shards):
        mine = shards == shard
        lengths = n_tokens[mine]
        offsets[mine] = space.token_base(int(shard)) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return plan.append_column("offset", pa.array(offsets))


def _write(space: SpaceEmbeddings, kind: Kind, plan: pa.Table) -> None:
    space.write_plan(kind, plan)
    last_shard = space.geometry.shard_of(int(plan["row"].to_numpy().max()))
    space.grow(kind, last_shard + 1)


def pending_work(space: SpaceEmbeddings, kind: Kind) -> list[tuple[int, pa.Table]]:
    """(shard, its planned rows) for every planned shard without a commit record."""
    pending = space.pending_shards(kind)
    if not pending:
        return []
    plan = space.plan(kind)
    shards = plan["row"].to_numpy() // space.geometry.rows_per_shard
    return [(s, plan.filter(pa.array(shards == s)).sort_by("row")) for s in pending]
