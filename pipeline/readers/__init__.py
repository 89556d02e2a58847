"""One reader per source format; each returns a RawDataset. READERS is the registry the CLI offers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from cache_schemas import InvalidSourceError

from . import bivlc, coco, folder, sugarcrepe, tabular, trohn, webdataset
from .base import RawDataset, RawItem, ReaderOptions
from .remote import NO_OPTIONS, SourceOptions

Reader = Callable[..., RawDataset]  # (source, images_root=, split=, options=, source_options=) -> RawDataset

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
                options: ReaderOptions = ReaderOptions(), source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    """`source_options`: fsspec options for the filesystem a remote source is on (--source-options)."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    raw = READERS[fmt](source, images_root=images_root, split=split, options=options, source_options=source_options)
    if not raw.items and not raw.extra_images:  # a dataset of nothing is a mistake, never a registration
        raise InvalidSourceError(f"{source} holds no items as {fmt}: nothing to extract")
    return raw


__all__ = ["FORMATS", "NO_OPTIONS", "READERS", "RawDataset", "RawItem", "ReaderOptions", "SourceOptions",
           "read_source"]
