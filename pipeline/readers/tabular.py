"""CSV, TSV, JSONL and Parquet tables of (image, caption[, negative_caption, ...]) rows: one file, a
folder of shards, a glob, or a Hugging Face `datasets` save_to_disk folder (a Dataset's, or a
DatasetDict's split); which files, and which split, is files.py's.

Columns: image, caption (required; other names with ReaderOptions, e.g. open_clip's filepath and
title, img2dataset's jpg); negative_caption or negative_captions (a text or a list); negative_image
(a path or a list); subset, type, subtype, split, item_id, url, key (optional). An image column may
hold paths, or the image bytes themselves (Hugging Face's {"bytes", "path"} struct, or binary), as
BiVLC's Parquet files do; such images are named table:// URIs and hash like files. A struct cell with
a path but no bytes (what `Dataset.to_parquet` writes) names a file; a cell with neither (an
img2dataset download that failed) is recorded as skipped. Optional annotations for the diagnostic:
boxes and negative_image_boxes ([[x0, y0, x1, y1], ...] per image), caption_segments and
negative_caption_segments (lists of texts). Relative image paths are resolved against
--images-root, or the folder of the table that names them. A table may be remote (s3://...), read
with --source-options."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.json

from cache_schemas import InvalidSourceError, VlcacheError
from cache_schemas.location import arrow_stream, parquet_table

from .base import RawDataset, RawItem, ReaderOptions, as_text_list, caption_text, require_columns, resolve
from .embedded import image_cells, is_image_column
from .files import source_files
from .remote import NO_OPTIONS, SourceOptions

SEPARATORS = {"csv": ",", "tsv": "\t"}
IMAGE_COLUMNS = ("image", "negative_image")


@dataclass(frozen=True)
class Part:
    """One file of a source: its path (what embedded images' URIs name), its rows (columns under
    their standard names) and the file's own names of the renamed columns (for those URIs)."""

    path: str
    table: pa.Table
    columns: dict[str, str]  # standard name -> the file's name, where they differ


def read_parts(source: str, fmt: str, options: ReaderOptions = ReaderOptions(), split: str | None = None,
               source_options: SourceOptions = NO_OPTIONS) -> tuple[list[Part], str | None]:
    """The source's files as tables, and the split its layout names (see files.py)."""
    found = source_files(source, fmt, split, source_options)
    parts = [_renamed(path, _read(path, found.fmt, options, source_options), options) for path in found.paths]
    return parts, found.split


def _read(path: str, fmt: str, options: ReaderOptions, source_options: SourceOptions) -> pa.Table:
    try:
        with source_options.input(path) as file:
            # A remote file is fsspec's, which Arrow must not read on its threads (cache_schemas.location.arrow_threads)
            if fmt in SEPARATORS:
                parse = pyarrow.csv.ParseOptions(delimiter=options.separator or SEPARATORS[fmt])
                return pyarrow.csv.read_csv(arrow_stream(file), parse_options=parse)
            if fmt == "jsonl":
                return pyarrow.json.read_json(arrow_stream(file))
            if fmt == "arrow":  # an IPC stream is read in this thread
                return pa.ipc.open_stream(pa.memory_map(file) if isinstance(file, str) else file).read_all()
            return parquet_table(file)
    except VlcacheError:
        raise  # the source's filesystem refused us: its own line
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidSourceError(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0]}") from None


def _renamed(path: str, table: pa.Table, options: ReaderOptions) -> Part:
    """The image and caption columns under their standard names."""
    names = {options.image_column: "image", options.caption_column: "caption"}
    options_used = [f"--{flag}-column {column}" for column, flag in names.items() if column != flag]
    missing = [c for c in names if c not in table.column_names]
    if missing:
        named = f" (named by {', '.join(options_used)})" if options_used else ""
        raise InvalidSourceError(f"{path} lacks column(s) {missing}{named}; it has {table.column_names}")
    # A column of the file that takes a standard name gives up its own ("image" read with --image-column jpg).
    kept = [c for c in table.column_names if c in names or c not in names.values()]
    table = table.select(kept)
    return Part(path, table.rename_columns([names.get(c, c) for c in kept]),
                {standard: own for own, standard in names.items() if own != standard})


def read(source: str, fmt: str, images_root: str | None, split: str | None, required: Iterable[str] = (),
         options: ReaderOptions = ReaderOptions(), source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    parts, layout_split = read_parts(source, fmt, options, split, source_options)
    split = layout_split or split
    dataset = RawDataset()
    offset = 0
    for part in parts:
        require_columns(part.table.column_names, ["image", "caption", *required], part.path)
        root = images_root or os.path.dirname(part.path)
        embedded = [c for c in IMAGE_COLUMNS if c in part.table.column_names
                    and is_image_column(part.table.schema.field(c))]
        _check_image_columns(part.table, embedded, part.path)
        cells = {c: image_cells(part.path, part.table[c], part.columns.get(c, c), root) for c in embedded}
        rows = part.table.drop_columns(embedded).to_pylist()  # image bytes stay in the file
        for i, row in enumerate(rows):
            where = f"{part.path} row {i}"
            row.update({c: cells[c][i] for c in embedded})
            if "image" in embedded and row["image"] is None:  # img2dataset's failed downloads, say
                dataset.skipped.append((where, _no_image(row)))
                continue
            add_row(dataset, row, where, offset + i, root, split, embedded)
        offset += len(rows)
    if not dataset.items:
        raise InvalidSourceError(f"no row of {source} has an image"
                                 + (f" (first: {dataset.skipped[0][0]}: {dataset.skipped[0][1]})"
                                    if dataset.skipped else ""))
    return dataset


def _no_image(row: dict[str, Any]) -> str:
    """Why a row has no image, in the source's own words where it has some (img2dataset's status)."""
    said = [str(row[k]) for k in ("status", "error_message") if row.get(k)]
    return "no image bytes or path" + (f" ({': '.join(said)})" if said else "")


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
        url=_text(row.get("url"), where, "url"),
        key=_key(row.get("key"), where),
    )
    dataset.items.append(item)
    _annotate(dataset, item, row, where)


def _text(value: object, where: str, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidSourceError(f"{where}: {name} must be a text, got {value!r}")
    return value


def _key(value: object, where: str) -> str | None:
    """The source's own id of a sample: a text (img2dataset's "000010005") or a whole number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value, where, "key")


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
