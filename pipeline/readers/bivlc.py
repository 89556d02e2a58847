"""BiVLC-style rows: image, caption, negative_caption, negative_image, type, subtype (CSV, JSONL or
Parquet, told apart by the file's extension). Each item is bidirectional: the negative caption
describes the negative image. The subset is "<type>_<subtype>", e.g. swap_att."""

from __future__ import annotations

import os

from cache_schemas import InvalidSourceError

from . import tabular
from .base import RawDataset

EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def read(source: str, images_root: str | None, split: str | None) -> RawDataset:
    fmt = EXTENSIONS.get(os.path.splitext(source)[1].lower())
    if fmt is None:
        raise InvalidSourceError(f"bivlc source {source} must end in one of {sorted(EXTENSIONS)}")
    required = ("negative_caption", "negative_image", "type", "subtype")
    return tabular.read(source, fmt, images_root, split, required=required)
