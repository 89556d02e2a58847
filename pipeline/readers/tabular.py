"""CSV, JSONL and Parquet tables of (image, caption[, negative_caption, ...]) rows.

Columns: image, caption (required); negative_caption or negative_captions (a text or a list);
negative_image (a path or a list); subset, type, subtype, split, item_id (optional). Optional
annotations for the diagnostic: boxes and negative_image_boxes ([[x0, y0, x1, y1], ...] per image),
caption_segments and negative_caption_segments (lists of texts). Relative image paths are resolved
against --images-root, or the table's own folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, as_text_list, require_columns, resolve

READERS = {"csv": pyarrow.csv.read_csv, "jsonl": pyarrow.json.read_json, "parquet": pq.read_table}


def read_table(source: str, fmt: str) -> pa.Table:
    if not os.path.isfile(source):
        raise InvalidSourceError(f"{fmt} source {source} is not a file")
    try:
        return READERS[fmt](source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidSourceError(f"cannot read {source} as {fmt}: {str(exc).splitlines()[0]}") from None


def read(source: str, fmt: str, images_root: str | None, split: str | None, required: Iterable[str] = ()) -> RawDataset:
    table = read_table(source, fmt)
    require_columns(table.column_names, ["image", "caption", *required], source)
    root = images_root or os.path.dirname(os.path.abspath(source))
    return rows_to_dataset(table.to_pylist(), source, root, split)


def rows_to_dataset(rows: list[dict[str, Any]], source: str, root: str, split: str | None) -> RawDataset:
    dataset = RawDataset()
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        if not isinstance(row.get("image"), str) or not isinstance(row.get("caption"), str) or not row["caption"]:
            raise InvalidSourceError(f"{where}: image must be a path and caption a non-empty text")
        negatives = as_text_list(row.get("negative_captions", row.get("negative_caption")), where)
        negative_images = tuple(resolve(p, root) for p in as_text_list(row.get("negative_image"), where))
        item = RawItem(
            item_id=str(row.get("item_id") if row.get("item_id") is not None else i),
            image=resolve(row["image"], root),
            caption=row["caption"],
            negative_captions=negatives,
            negative_images=negative_images,
            subset=str(row.get("subset") or _subset(row)),
            type=row.get("type"),
            subtype=row.get("subtype"),
            split=str(row.get("split") or split or "test"),
        )
        dataset.items.append(item)
        _annotate(dataset, item, row)
    return dataset


def _subset(row: dict[str, Any]) -> str:
    kind, sub = row.get("type"), row.get("subtype")
    return f"{kind}_{sub}" if kind and sub else kind or "default"


def _annotate(dataset: RawDataset, item: RawItem, row: dict[str, Any]) -> None:
    if row.get("boxes"):
        dataset.boxes[item.image] = [tuple(map(float, b)) for b in row["boxes"]]
    if row.get("negative_image_boxes") and item.negative_images:
        dataset.boxes[item.negative_images[0]] = [tuple(map(float, b)) for b in row["negative_image_boxes"]]
    if row.get("caption_segments"):
        dataset.segments[item.caption] = list(row["caption_segments"])
    if row.get("negative_caption_segments") and item.negative_captions:
        dataset.segments[item.negative_captions[0]] = list(row["negative_caption_segments"])
