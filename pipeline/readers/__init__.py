"""One reader per source format; each returns a RawDataset."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from . import bivlc, coco, folder, sugarcrepe, tabular
from .base import RawDataset, RawItem

Reader = Callable[[str, "str | None", "str | None"], RawDataset]

READERS: dict[str, Reader] = {
    "folder": folder.read,
    "csv": partial(tabular.read, fmt="csv"),
    "jsonl": partial(tabular.read, fmt="jsonl"),
    "parquet": partial(tabular.read, fmt="parquet"),
    "sugarcrepe": sugarcrepe.read,
    "bivlc": bivlc.read,
    "coco": coco.read,
}
FORMATS = tuple(READERS)


def read_source(source: str, fmt: str, images_root: str | None = None, split: str | None = None) -> RawDataset:
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return READERS[fmt](source, images_root=images_root, split=split)


__all__ = ["FORMATS", "READERS", "RawDataset", "RawItem", "read_source"]
