"""`verify`: re-read every committed shard and check it against its commit record."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .embeddings import SpaceEmbeddings, checksum
from .errors import VlcacheError
from .store import Store


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Store) -> VerifyReport:
    report = VerifyReport()
    for name in store.dataset_names():
        _verify_dataset(store, name, report)
    for key in store.space_keys():
        try:
            space = store.space(key)
        except VlcacheError as exc:
            report.problems.append(f"space {key}: {exc}")
            continue
        for kind in ("images", "texts"):
            _verify_kind(space, kind, report)
    return report


def _verify_dataset(store: Store, name: str, report: VerifyReport) -> None:
    try:
        dataset = store.dataset(name)
        items, images, texts = dataset.items, dataset.images, dataset.texts
    except (VlcacheError, OSError) as exc:
        report.problems.append(f"dataset {name}: {exc}")
        return
    image_hashes, text_hashes = set(images["hash"].to_pylist()), set(texts["hash"].to_pylist())
    referenced_images = set(items["image"].drop_null().to_pylist())
    referenced_images |= set(pc.list_flatten(items["negative_images"]).to_pylist())
    referenced_texts = set(items["caption"].to_pylist()) | set(pc.list_flatten(items["negative_captions"]).to_pylist())
    for what, missing in (("images", referenced_images - image_hashes), ("texts", referenced_texts - text_hashes)):
        if missing:
            report.problems.append(f"dataset {name}: items refer to {len(missing)} {what} not in its {what} table")
    report.checked["datasets"] += 1
    report.checked["items"] += items.num_rows


def _verify_kind(space: SpaceEmbeddings, kind: str, report: VerifyReport) -> None:
    where = f"space {space.key} {kind}"
    seen: list[pa.Array] = []  # encoded hashes, in Arrow: counted for copies at the end
    for shard in space.listed_shards(kind):  # every part file, whatever the index says
        try:
            part, meta = space.part(kind, shard)
        except (VlcacheError, OSError, KeyError, ValueError) as exc:
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
                block = _committed_block(space, kind, name, part, meta)
            except Exception as exc:  # a missing or corrupt Zarr shard surfaces as many error types
                report.problems.append(f"{where} shard {shard}: {name} unreadable ({type(exc).__name__}: {exc})")
                continue
            if checksum(block) != expected:
                report.problems.append(f"{where} shard {shard}: {name} does not match its checksum")
        report.checked[f"{kind} shards"] += 1
        report.checked[f"{kind} rows"] += len(rows)
    covered = space.indexed_shards(kind) or set()
    orphans = covered - set(space.listed_shards(kind))
    if orphans:
        report.problems.append(f"{where}: the index covers {len(orphans)} shards without a commit record "
                               f"(first: {min(orphans)}); run vlcache cache compact")
    counts = pc.value_counts(pa.chunked_array(seen, pa.string()).combine_chunks()).field("counts")
    duplicated = int(pc.sum(pc.greater(counts, 1)).as_py() or 0)
    if duplicated:
        report.problems.append(f"{where}: {duplicated} content hashes stored more than once")


def _committed_block(space: SpaceEmbeddings, kind: str, name: str, part, meta: dict) -> np.ndarray:
    array = space.array(name)
    if space.layouts[name].ragged:
        start, stop = meta["token_rows"]
        return array[start:stop]
    rows = part["row"].to_numpy()
    return array[int(rows.min()):int(rows.max()) + 1] if rows.size else array[0:0]
