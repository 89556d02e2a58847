"""TROHN-Text and TROHN-Img: COCO-train-derived training sets with generated hard negatives, as a
JSON list (or JSON Lines) of {"image_id", "caption", "negative_caption"[, "negative_image"]}. The
image is COCO's `{image_id:012d}.jpg` under --images-root (train2017); a negative image (TROHN-Img)
is a path, resolved against the JSON's folder. Items are swap/replace/add negatives of unknown
type, so the subset is "trohn". The JSON and its images may be remote (read with --source-options)."""

from __future__ import annotations

import json
import os
import re

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, caption_text, resolve
from .remote import NO_OPTIONS, SourceOptions, absolute


def read(source: str, images_root: str | None, split: str | None, options: ReaderOptions = ReaderOptions(),
         source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    rows = _rows(source, source_options)
    here = os.path.dirname(absolute(source))
    root = images_root or here
    dataset = RawDataset()
    for i, row in enumerate(rows):
        where = f"{source} entry {i}"
        if not isinstance(row, dict):
            raise InvalidSourceError(f"{where}: expected an object with image_id, caption and negative_caption")
        name = _image_name(row.get("image_id"), where)
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


def _image_name(image_id: object, where: str) -> str:
    """COCO's file name for a numeric id (an int, or ASCII digits: "²" is a digit to str.isdigit, not to
    int); any other text names the image file itself."""
    if isinstance(image_id, int) and not isinstance(image_id, bool) and image_id >= 0:
        return f"{image_id:012d}.jpg"
    if isinstance(image_id, str) and image_id.strip():
        return f"{int(image_id):012d}.jpg" if re.fullmatch(r"[0-9]+", image_id) else image_id
    raise InvalidSourceError(f"{where}: image_id must be a COCO image id (a non-negative integer) or an image "
                             f"path, got {image_id!r}")


def _rows(source: str, source_options: SourceOptions) -> list:
    if not source_options.isfile(source):
        raise InvalidSourceError(f"trohn source {source} is not a file")
    try:
        text = source_options.read(source).decode("utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON Lines
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSourceError(f"{source} is neither a JSON list nor JSON Lines: {exc}") from None
    if not isinstance(data, list):
        raise InvalidSourceError(f"{source} must hold a JSON list of entries")
    return data
