"""BiVLC-style rows: image, caption, negative_caption, negative_image, type, subtype, as CSV, JSONL or
Parquet (told apart by the file's extension, a glob's too), a folder of Parquet shards, or a Hugging
Face `save_to_disk` folder. BiVLC itself is published as Parquet with the image bytes inside: those
images are read from the file. Each item is bidirectional: the negative caption describes the
negative image. The subset is "<type>_<subtype>", e.g. swap_att."""

from __future__ import annotations

import os

from cache_schemas import InvalidSourceError

from . import tabular
from .base import RawDataset, ReaderOptions
from .remote import NO_OPTIONS, SourceOptions

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
REQUIRED = ("negative_caption", "negative_image", "type", "subtype")


def read(source: str, images_root: str | None, split: str | None, options: ReaderOptions = ReaderOptions(),
         source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    # A folder: a `datasets` save_to_disk folder (found whatever the format), else Parquet shards.
    fmt = "parquet" if source_options.isdir(source) else EXTENSIONS.get(os.path.splitext(source)[1].lower())
    if fmt is None:
        raise InvalidSourceError(f"bivlc source {source} must end in one of {sorted(EXTENSIONS)} "
                                 "(or be a folder of Parquet shards or a datasets save_to_disk folder)")
    return tabular.read(source, fmt, images_root, split, required=REQUIRED, options=options,
                        source_options=source_options)
