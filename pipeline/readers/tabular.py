"""CSV, TSV, JSONL and Parquet tables of (image, caption[, negative_caption, ...]) rows, and Hugging
Face `datasets` folders written by `save_to_disk` (Arrow files beside a state.json).

Columns: image, caption (required; other names with ReaderOptions, e.g. open_clip's filepath and
title); negative_caption or negative_captions (a text or a list); negative_image (a path or a list);
subset, type, subtype, split, item_id (optional). An image column may hold paths, or the image bytes
themselves (Hugging Face's {"bytes", "path"} struct, or binary), as BiVLC's Parquet files do; such
images are named table:// URIs and hash like files. Optional annotations for the diagnostic: boxes
and negative_image_boxes ([[x0, y0, x1, y1], ...] per image), caption_segments and
negative_caption_segments (lists of texts). Relative image paths are resolved against
--images-root, or the table's own folder."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, as_text_list, caption_text, require_columns, resolve
from .embedded import is_image_column, table_uri

SEPARATORS = {"csv": ",", "tsv": "\t"}
IMAGE_COLUMNS = ("image", "negative_image")


@dataclass(frozen=True)
class Part:
    """One file of a source: its path (what embedded images' URIs name) and its rows."""

    path: str
    table: pa.Table


def read_parts(source: str, fmt: str, options: ReaderOptions = ReaderOptions()) -> list[Part]:
    """The source's files as tables, columns renamed to the standard names."""
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "state.json")):
        files = sorted(glob.glob(os.path.join(source, "*.arrow")))
        parts = [Part(f, _read(f, "arrow", options)) for f in files]
        if not parts:
            raise InvalidSourceError(f"{source} has a state.json but no .arrow files")
    elif os.path.isfile(source):
        parts = [Part(source, _read(source, fmt, options))]
    else:
        raise InvalidSourceError(f"{fmt} source {source} is not a file (or a `datasets` save_to_disk folder)")
    return [Part(p.path, _renamed(p.table, options, source)) for p in parts]


def _read(path: str, fmt: str, options: ReaderOptions) -> pa.Table:
    try:
        if fmt in SEPARATORS:
            parse = pyarrow.csv.ParseOptions(delimiter=options.separator or SEPARATORS[fmt])
            return pyarrow.csv.read_csv(path, parse_options=parse)
        if fmt == "jsonl":
            return pyarrow.json.read_json(path)
        if fmt == "arrow":
            return pa.ipc.open_stream(pa.memory_map(path)).read_all()
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidSourceError(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0]}") from None


def _renamed(table: pa.Table, options: ReaderOptions, source: str) -> pa.Table:
    """The image and caption columns under their standard names."""
    names = {options.image_column: "image", options.caption_column: "caption"}
    options_used = [f"--{flag}-column {column}" for column, flag in names.items() if column != flag]
    missing = [c for c in names if c not in table.column_names]
    if missing:
        named = f" (named by {', '.join(options_used)})" if options_used else ""
        raise InvalidSourceError(f"{source} lacks column(s) {missing}{named}; it has {table.column_names}")
    return table.rename_columns([names.get(c, c) for c in table.column_names])


def read(source: str, fmt: str, images_root: str | None, split: str | None, required: Iterable[str] = (),
         options: ReaderOptions = ReaderOptions()) -> RawDataset:
    parts = read_parts(source, fmt, options)
    root = images_root or os.path.dirname(os.path.abspath(source))
    dataset = RawDataset()
    offset = 0
    for part in parts:
        require_columns(part.table.column_names, ["image", "caption", *required], source)
        embedded = [c for c in IMAGE_COLUMNS if c in part.table.column_names
                    and is_image_column(part.table.schema.field(c))]
        _check_image_columns(part.table, embedded, source)
        rows = part.table.drop_columns(embedded).to_pylist()  # image bytes stay in the file
        present = {c: part.table[c].is_valid().to_pylist() for c in embedded}
        for i, row in enumerate(rows):
            for column in embedded:
                row[column] = table_uri(part.path, column, i) if present[column][i] else None
            add_row(dataset, row, f"{source} row {offset + i}", offset + i, root, split, embedded)
        offset += len(rows)
    return dataset


def _check_image_columns(table: pa.Table, embedded: list[str], source: str) -> None:
    for column in IMAGE_COLUMNS:
        if column in table.column_names and column not in embedded and not (
                pa.types.is_string(table.schema.field(column).type) or pa.types.is_large_string(
                table.schema.field(column).type) or pa.types.is_null(table.schema.field(column).type)
                or pa.types.is_list(table.schema.field(column).type)):
            raise InvalidSourceError(f"{source}: column {column!r} must hold paths or image bytes, "
                                     f"not {table.schema.field(column).type}")


def add_row(dataset: RawDataset, row: dict[str, Any], where: str, index: int, root: str, split: str | None,
            embedded: Iterable[str] = ()) -> None:
    """One table row as an item (images named by path, or by URI when `embedded`)."""
    place = (lambda p: p) if "image" in embedded else (lambda p: resolve(p, root))
    if not isinstance(row.get("image"), str):
        raise InvalidSourceError(f"{where}: image must be a path (or image bytes), got {row.get('image')!r}")
    negatives = as_text_list(row.get("negative_captions", row.get("negative_caption")), where)
    raw_negative_images = as_text_list(row.get("negative_image"), where)
    negative_images = tuple(raw_negative_images if "negative_image" in embedded
                            else (resolve(p, root) for p in raw_negative_images))
    item = RawItem(
        item_id=str(row.get("item_id") if row.get("item_id") is not None else index),
        image=place(row["image"]),
        caption=caption_text(row.get("caption"), where),
        negative_captions=tuple(caption_text(n, where) for n in negatives),
        negative_images=negative_images,
        subset=_text(row.get("subset"), where, "subset") or _subset(row, where),
        type=_text(row.get("type"), where, "type"),
        subtype=_text(row.get("subtype"), where, "subtype"),
        split=_text(row.get("split"), where, "split") or split or "test",
    )
    dataset.items.append(item)
    _annotate(dataset, item, row, where)


def _text(value: object, where: str, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidSourceError(f"{where}: {name} must be a text, got {value!r}")
    return value


def _subset(row: dict[str, Any], where: str) -> str:
    kind, sub = _text(row.get("type"), where, "type"), _text(row.get("subtype"), where, "subtype")
    return f"{kind}_{sub}" if kind and sub else kind or "default"


def _annotate(dataset: RawDataset, item: RawItem, row: dict[str, Any], where: str) -> None:
    if row.get("boxes"):
        dataset.boxes[item.image] = _boxes(row["boxes"], where)
    if row.get("negative_image_boxes") and item.negative_images:
        dataset.boxes[item.negative_images[0]] = _boxes(row["negative_image_boxes"], where)
    if row.get("caption_segments"):
        dataset.segments[item.caption] = [caption_text(s, where) for s in row["caption_segments"]]
    if row.get("negative_caption_segments") and item.negative_captions:
        dataset.segments[item.negative_captions[0]] = [caption_text(s, where)
                                                       for s in row["negative_caption_segments"]]


def _boxes(value: object, where: str) -> list[tuple[float, ...]]:
    """[[x0, y0, x1, y1], ...] of numbers, or a one-line error."""
    ok = isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in b) for b in value)
    if not ok:
        raise InvalidSourceError(f"{where}: boxes must be a list of [x0, y0, x1, y1] numbers, got {value!r}")
    return [tuple(map(float, b)) for b in value]
