"""A folder of images, searched recursively. A caption sidecar (same stem, .txt, one caption per
line) makes items; without one, a .json sidecar's "caption" does. That is img2dataset's `files`
layout (00000/000000001.jpg, .txt, .json), and the .json's url and key are kept with the item.
Images without a caption are encoded all the same. The subset is the image's sub-folder. The folder
may be remote (s3://bucket/images/), read with --source-options; its sidecars are fetched together."""

from __future__ import annotations

import os

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, Sidecar
from .remote import NO_OPTIONS, SourceOptions

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def read(source: str, images_root: str | None, split: str | None, options: ReaderOptions = ReaderOptions(),
         source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    if not source_options.isdir(source):
        raise InvalidSourceError(f"folder source {source} is not a folder")
    files = source_options.files_under(source)
    images = [p for p in files if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    present = set(files)
    sidecars = source_options.read_many([s for p in images for s in _sidecars(p) if s in present])
    dataset = RawDataset()
    for path in images:
        text, meta = _sidecars(path)
        meta = Sidecar.parse(sidecars.get(meta))
        captions = _captions(sidecars.get(text)) or ([meta.caption] if meta.caption else [])
        if not captions:
            dataset.extra_images.append(path)
        subset = os.path.relpath(os.path.dirname(path), source).replace(os.sep, "/")
        name = os.path.relpath(os.path.splitext(path)[0], source).replace(os.sep, "/")
        for i, caption in enumerate(captions):
            dataset.items.append(RawItem(item_id=f"{name}#{i}", image=path, caption=caption,
                                         subset="default" if subset == "." else subset, split=split or "train",
                                         url=meta.url, key=meta.key))
    if not dataset.items and not dataset.extra_images:
        raise InvalidSourceError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source}")
    return dataset


def _sidecars(image: str) -> tuple[str, str]:
    stem = os.path.splitext(image)[0]
    return stem + ".txt", stem + ".json"


def _captions(raw: bytes | None) -> list[str]:
    """One caption per line of a .txt sidecar (any line ending), blank lines left out."""
    if raw is None:
        return []
    lines = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.strip() for line in lines if line.strip()]
