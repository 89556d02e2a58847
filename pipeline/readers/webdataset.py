"""webdataset tar shards, as img2dataset writes them: members grouped by key (the name up to its first
dot), an image (jpg, jpeg, png, webp) with its caption in a .txt member, or in a .json member's
"caption" (or "text") field; the .json's url and key are kept with the item. SOURCE is a .tar file,
a folder of them, a glob, or an fsspec URL (s3://bucket/shards/{00000..00099}.tar is expanded like
webdataset's brace notation), read with --source-options.

Images are named `tar://<member>::<shard>` (fsspec's tar filesystem), so they hash and dedup
exactly like files. A key without an image, or an image without a caption, is recorded as skipped
(in the dataset's errors table), never silently dropped."""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections import defaultdict

from cache_schemas import InvalidSourceError, VlcacheError

from .base import RawDataset, RawItem, ReaderOptions, Sidecar
from .remote import NO_OPTIONS, SourceOptions, absolute

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read(source: str, images_root: str | None, split: str | None, options: ReaderOptions = ReaderOptions(),
         source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    dataset = RawDataset()
    for shard in shards(source, source_options):
        for key, members in _members(shard, source_options).items():
            _add(dataset, shard, key, members, split)
    if not dataset.items:
        raise InvalidSourceError(f"no captioned images in the shards of {source}")
    return dataset


def shards(source: str, source_options: SourceOptions = NO_OPTIONS) -> list[str]:
    """The shard URLs a source names: a file, a folder of .tar files, a glob or a brace range."""
    if os.path.isdir(source):
        found = sorted(os.path.join(source, f) for f in os.listdir(source) if f.endswith(".tar"))
    else:
        found = [shard for pattern in _braces(source)
                 for shard in (source_options.glob(pattern) if glob.has_magic(pattern) else [pattern])]
    if not found:
        raise InvalidSourceError(f"no .tar shards at {source}")
    return [absolute(s) for s in found]


def _braces(pattern: str) -> list[str]:
    """webdataset's {00000..00003} ranges, expanded (zero padding kept)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    first, last = match.groups()
    return [p for n in range(int(first), int(last) + 1)
            for p in _braces(pattern[:match.start()] + str(n).zfill(len(first)) + pattern[match.end():])]


def _members(shard: str, source_options: SourceOptions) -> dict[str, dict[str, bytes | None]]:
    """key -> {extension: bytes for captions, None for images (read later, by URI)}."""
    grouped: dict[str, dict[str, bytes | None]] = defaultdict(dict)
    try:
        with source_options.open(shard) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                extension = extension.lower()
                wanted = extension in ("txt", "json")
                grouped[key][extension] = tar.extractfile(member).read() if wanted else None
    except VlcacheError:
        raise  # the source's filesystem refused us: its own line
    except (OSError, tarfile.TarError) as exc:
        raise InvalidSourceError(f"cannot read the tar shard {shard}: {exc}") from None
    return grouped


def _add(dataset: RawDataset, shard: str, key: str, members: dict[str, bytes | None], split: str | None) -> None:
    where = f"{shard}: {key}"
    image = next((f"{key}.{e}" for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        dataset.skipped.append((where, f"no image member ({', '.join(IMAGE_EXTENSIONS)})"))
        return
    meta = Sidecar.parse(members.get("json"))
    caption = _text(members.get("txt")) or meta.caption
    if caption is None:
        dataset.skipped.append((where, "no caption (.txt, or a .json with a caption)"))
        return
    dataset.items.append(RawItem(item_id=f"{os.path.basename(shard)}/{key}", image=f"tar://{image}::{shard}",
                                 caption=caption, subset=os.path.basename(os.path.dirname(key)) or "default",
                                 split=split or "train", url=meta.url, key=meta.key))


def _text(raw: bytes | None) -> str | None:
    text = raw.decode("utf-8", errors="replace").strip() if raw is not None else ""
    return text or None
