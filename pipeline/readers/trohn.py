"""TROHN-Text and TROHN-Img: COCO-train-derived training sets with generated hard negatives, as a
JSON list (or JSON Lines) of {"image_id", "caption", "negative_caption"[, "negative_image"]}. The
image is COCO's `{image_id:012d}.jpg` under --images-root (train2017); a negative image (TROHN-Img)
is a path, resolved against the JSON's folder. Items are swap/replace/add negatives of unknown
type, so the subset is "trohn"."""

from __future__ import annotations

import json
import os

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, caption_text, resolve


def read(source: str, images_root: str | None, split: str | None,
         options: ReaderOptions = ReaderOptions()) -> RawDataset:
    rows = _rows(source)
    root = images_root or os.path.dirname(os.path.abspath(source))
    here = os.path.dirname(os.path.abspath(source))
    dataset = RawDataset()
    for i, row in enumerate(rows):
        where = f"{source} entry {i}"
        if not isinstance(row, dict):
            raise InvalidSourceError(f"{where}: expected an object with image_id, caption and negative_caption")
        image_id = row.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or str(image_id) == "":
            raise InvalidSourceError(f"{where}: image_id must be a COCO image id, got {image_id!r}")
        name = f"{int(image_id):012d}.jpg" if str(image_id).isdigit() else str(image_id)
        negative_image = row.get("negative_image")
        if negative_image is not None and not isinstance(negative_image, str):
            raise InvalidSourceError(f"{where}: negative_image must be a path, got {negative_image!r}")
        dataset.items.append(RawItem(
            item_id=str(row.get("id", i)),
            image=resolve(name, root),
            caption=caption_text(row.get("caption"), where),
            negative_captions=(caption_text(row.get("negative_caption"), where),),
            negative_images=(resolve(negative_image, here),) if negative_image else (),
            subset="trohn",
            split=split or "train",
        ))
    return dataset


def _rows(source: str) -> list:
    if not os.path.isfile(source):
        raise InvalidSourceError(f"trohn source {source} is not a file")
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON Lines
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSourceError(f"{source} is neither a JSON list nor JSON Lines: {exc}") from None
    if not isinstance(data, list):
        raise InvalidSourceError(f"{source} must hold a JSON list of entries")
    return data
