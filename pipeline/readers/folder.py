"""A folder of images, searched recursively. A caption sidecar (same stem, .txt, one caption per
line, as img2dataset writes) makes items; images without one are encoded all the same. The subset
is the image's sub-folder."""

from __future__ import annotations

import os

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def read(source: str, images_root: str | None, split: str | None,
         options: ReaderOptions = ReaderOptions()) -> RawDataset:
    if not os.path.isdir(source):
        raise InvalidSourceError(f"folder source {source} is not a folder")
    dataset = RawDataset()
    for path in _images(source):
        captions = _captions(os.path.splitext(path)[0] + ".txt")
        if not captions:
            dataset.extra_images.append(path)
        subset = os.path.relpath(os.path.dirname(path), source).replace(os.sep, "/")
        for i, caption in enumerate(captions):
            stem = os.path.relpath(os.path.splitext(path)[0], source).replace(os.sep, "/")
            dataset.items.append(RawItem(item_id=f"{stem}#{i}", image=path, caption=caption,
                                         subset="default" if subset == "." else subset, split=split or "train"))
    if not dataset.items and not dataset.extra_images:
        raise InvalidSourceError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source}")
    return dataset


def _images(source: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return [os.path.abspath(p) for p in found]


def _captions(path: str) -> list[str]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]
