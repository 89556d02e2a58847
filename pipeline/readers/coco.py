"""COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.
One item per caption (five per image in COCO), no negatives; good for retrieval and training. The
JSON and its images may be remote (read with --source-options)."""

from __future__ import annotations

import json
import os

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, caption_text, resolve
from .remote import NO_OPTIONS, SourceOptions, absolute


def read(source: str, images_root: str | None, split: str | None, options: ReaderOptions = ReaderOptions(),
         source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    if not source_options.isfile(source):
        raise InvalidSourceError(f"coco source {source} is not a file")
    try:
        data = json.loads(source_options.read(source).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSourceError(f"{source} is not a COCO captions file ({type(exc).__name__}: {exc})") from None
    files, annotations = _images(data, source), _objects(data, "annotations", source)
    root = images_root or os.path.dirname(absolute(source))
    split = split or _split_from_name(source)
    dataset = RawDataset()
    for i, ann in enumerate(annotations):
        where = f"{source} annotation {i}"
        if not isinstance(ann.get("image_id"), (int, str)) or ann.get("image_id") not in files:
            raise InvalidSourceError(f"{where}: image_id {ann.get('image_id')!r} names no image with a file_name text")
        dataset.items.append(RawItem(
            item_id=str(ann.get("id", i)),
            image=resolve(files[ann["image_id"]], root),
            caption=caption_text(ann.get("caption"), where).strip(),
            split=split,
        ))
    return dataset


def _objects(data: object, key: str, source: str) -> list[dict]:
    """`data[key]`, a list of JSON objects, or one line saying what the file holds instead."""
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InvalidSourceError(f"{source} is not a COCO captions file: it needs {key!r}, a list of objects")
    wrong = next((i for i, e in enumerate(entries) if not isinstance(e, dict)), None)
    if wrong is not None:
        raise InvalidSourceError(f"{source} is not a COCO captions file: {key}[{wrong}] is "
                                 f"{type(entries[wrong]).__name__}, not an object")
    return entries


def _images(data: object, source: str) -> dict:
    """Image id -> file name, for the images that have both."""
    return {img["id"]: img["file_name"] for img in _objects(data, "images", source)
            if isinstance(img.get("file_name"), str) and isinstance(img.get("id"), (int, str))}


def _split_from_name(source: str) -> str:
    stem = os.path.basename(source).lower()
    return next((s for s in ("train", "val", "test") if s in stem), "train")
