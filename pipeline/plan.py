"""Dedup and row assignment: which content a space still needs, and where each piece goes.

A plan is written (exclusively) before any encoding, so a rerun after a crash finds the same rows
for the same content and recomputes only the shards that never committed. The caller holds the
space's writer lease: what is new and where it goes are decided from one reading of the plans
(`Ledger.scan_plans`, which keeps only what this dataset asks about, whatever the space's size)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cache_schemas import DatasetTables, SpaceWriter
from cache_schemas.layout import Kind

Tokenize = Callable[[Sequence[str]], np.ndarray]  # texts -> count of real tokens per text


def plan_new_content(space: SpaceWriter, dataset: DatasetTables, count_tokens: Tokenize,
                     retry_failed: bool = False) -> dict[Kind, int]:
    """Write plans for the dataset's content the space has neither encoded nor planned; return how
    many images and texts were newly planned."""
    new = {"images": _new_rows(space, "images", dataset.images, retry_failed),
           "texts": _new_rows(space, "texts", dataset.texts, retry_failed)}
    if new["images"].num_rows:
        images = new["images"].select(["hash", "uri", "width", "height"])
        _write(space, "images", _assign_rows(space, "images", images))
    if new["texts"].num_rows:
        texts = new["texts"].select(["hash", "text"])
        n_tokens = count_tokens(texts["text"].to_pylist()).astype(np.int32)
        planned = _assign_rows(space, "texts", texts.append_column("n_tokens", pa.array(n_tokens)))
        offsets = space.geometry.token_offsets(planned["row"].to_numpy(), n_tokens, space.spec.context_length)
        _write(space, "texts", planned.append_column("offset", pa.array(offsets)))
    return {kind: table.num_rows for kind, table in new.items()}


def _new_rows(space: SpaceWriter, kind: Kind, content: pa.Table, retry_failed: bool) -> pa.Table:
    """The content no plan holds yet (with `retry_failed`, also what failed and never succeeded)."""
    known = space.ledger.scan_plans(kind, content["hash"])
    if retry_failed and len(known):
        committed = space.ledger.lookup(kind, known)
        succeeded = committed.filter(pc.is_null(committed["error"]))["hash"]
        failed = committed.filter(pc.is_valid(committed["error"]))["hash"]
        retry = failed.filter(pc.invert(pc.is_in(failed, value_set=succeeded)))
        known = known.filter(pc.invert(pc.is_in(known, value_set=retry.combine_chunks())))
    return content.filter(pc.invert(pc.is_in(content["hash"], value_set=known)))


def _assign_rows(space: SpaceWriter, kind: Kind, table: pa.Table) -> pa.Table:
    """Consecutive rows from the first shard no plan has claimed: a new plan never shares a Zarr
    shard with committed data, so committed shards are never rewritten."""
    start = space.ledger.next_free_shard(kind) * space.geometry.rows_per_shard
    return table.append_column("row", pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)))


def _write(space: SpaceWriter, kind: Kind, plan: pa.Table) -> None:
    space.write_plan(kind, plan)
    space.grow(kind, int(space.geometry.shard_of(int(plan["row"].to_numpy().max()))) + 1)
