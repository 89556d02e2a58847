"""One reader per source format; each returns a RawDataset. READERS is the registry the CLI offers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from . import bivlc, coco, folder, sugarcrepe, tabular, trohn, webdataset
from .base import RawDataset, RawItem, ReaderOptions

Reader = Callable[..., RawDataset]  # (source, images_root=, split=, options=) -> RawDataset

READERS: dict[str, Reader] = {
    "folder": folder.read,
    "csv": partial(tabular.read, fmt="csv"),
    "tsv": partial(tabular.read, fmt="tsv"),
    "jsonl": partial(tabular.read, fmt="jsonl"),
    "parquet": partial(tabular.read, fmt="parquet"),
    "sugarcrepe": sugarcrepe.read,
    "bivlc": bivlc.read,
    "coco": coco.read,
    "trohn": trohn.read,
    "webdataset": webdataset.read,
}
FORMATS = tuple(READERS)


def read_source(source: str, fmt: str, images_root: str | None = None, split: str | None = None,
                options: ReaderOptions = ReaderOptions()) -> RawDataset:
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return READERS[fmt](source, images_root=images_root, split=split, options=options)


__all__ = ["FORMATS", "READERS", "RawDataset", "RawItem", "ReaderOptions", "read_source"]
