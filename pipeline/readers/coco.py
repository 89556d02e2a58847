"""COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.
One item per caption (five per image in COCO), no negatives; good for retrieval and training."""

from __future__ import annotations

import json
import os

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, caption_text, resolve


def read(source: str, images_root: str | None, split: str | None,
         options: ReaderOptions = ReaderOptions()) -> RawDataset:
    if not os.path.isfile(source):
        raise InvalidSourceError(f"coco source {source} is not a file")
    try:
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
        files = {img["id"]: img["file_name"] for img in data["images"] if isinstance(img.get("file_name"), str)}
        annotations = data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InvalidSourceError(f"{source} is not a COCO captions file ({type(exc).__name__}: {exc})") from None
    root = images_root or os.path.dirname(os.path.abspath(source))
    split = split or _split_from_name(source)
    dataset = RawDataset()
    for i, ann in enumerate(annotations):
        where = f"{source} annotation {i}"
        if ann.get("image_id") not in files:
            raise InvalidSourceError(f"{where}: image_id {ann.get('image_id')!r} names no image with a file_name text")
        dataset.items.append(RawItem(
            item_id=str(ann.get("id", i)),
            image=resolve(files[ann["image_id"]], root),
            caption=caption_text(ann.get("caption"), where).strip(),
            split=split,
        ))
    return dataset


def _split_from_name(source: str) -> str:
    stem = os.path.basename(source).lower()
    return next((s for s in ("train", "val", "test") if s in stem), "train")
