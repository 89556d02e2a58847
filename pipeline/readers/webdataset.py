"""webdataset tar shards, as img2dataset writes them: members grouped by key (the name up to its first
dot), an image (jpg, jpeg, png, webp) with its caption in a .txt member, or in a .json member's
"caption" (or "text") field. SOURCE is a .tar file, a folder of them, a glob, or an fsspec URL
(s3://bucket/shards/{00000..00099}.tar is expanded like webdataset's brace notation).

Images are named `tar://<member>::<shard>` (fsspec's tar filesystem), so they hash and dedup
exactly like files. A key without an image, or an image without a caption, is recorded as skipped
(in the dataset's errors table), never silently dropped."""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections import defaultdict

import fsspec

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read(source: str, images_root: str | None, split: str | None,
         options: ReaderOptions = ReaderOptions()) -> RawDataset:
    dataset = RawDataset()
    for shard in shards(source):
        for key, members in _members(shard).items():
            _add(dataset, shard, key, members, split)
    if not dataset.items:
        raise InvalidSourceError(f"no captioned images in the shards of {source}")
    return dataset


def shards(source: str) -> list[str]:
    """The shard URLs a source names: a file, a folder of .tar files, a glob or a brace range."""
    if os.path.isdir(source):
        found = sorted(os.path.join(source, f) for f in os.listdir(source) if f.endswith(".tar"))
    else:
        found = []
        for pattern in _braces(source):
            fs, _, paths = fsspec.get_fs_token_paths(pattern)
            found += [fs.unstrip_protocol(p) if "://" in pattern else p for p in sorted(paths)]
    if not found:
        raise InvalidSourceError(f"no .tar shards at {source}")
    return [os.path.abspath(s) if "://" not in s else s for s in found]


def _braces(pattern: str) -> list[str]:
    """webdataset's {00000..00003} ranges, expanded (zero padding kept)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    first, last = match.groups()
    return [p for n in range(int(first), int(last) + 1)
            for p in _braces(pattern[:match.start()] + str(n).zfill(len(first)) + pattern[match.end():])]


def _members(shard: str) -> dict[str, dict[str, bytes | None]]:
    """key -> {extension: bytes for captions, None for images (read later, by URI)}."""
    grouped: dict[str, dict[str, bytes | None]] = defaultdict(dict)
    try:
        with fsspec.open(shard, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                extension = extension.lower()
                wanted = extension in ("txt", "json")
                grouped[key][extension] = tar.extractfile(member).read() if wanted else None
    except (OSError, tarfile.TarError) as exc:
        raise InvalidSourceError(f"cannot read the tar shard {shard}: {exc}") from None
    return grouped


def _add(dataset: RawDataset, shard: str, key: str, members: dict[str, bytes | None], split: str | None) -> None:
    where = f"{shard}: {key}"
    image = next((f"{key}.{e}" for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        dataset.skipped.append((where, f"no image member ({', '.join(IMAGE_EXTENSIONS)})"))
        return
    caption = _caption(members)
    if caption is None:
        dataset.skipped.append((where, "no caption (.txt, or a .json with a caption)"))
        return
    dataset.items.append(RawItem(item_id=f"{os.path.basename(shard)}/{key}", image=f"tar://{image}::{shard}",
                                 caption=caption, subset=os.path.basename(os.path.dirname(key)) or "default",
                                 split=split or "train"))


def _caption(members: dict[str, bytes | None]) -> str | None:
    text = None
    if members.get("txt") is not None:
        text = members["txt"].decode("utf-8", errors="replace")
    elif members.get("json") is not None:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        text = next((meta[k] for k in ("caption", "text") if isinstance(meta, dict) and isinstance(meta.get(k), str)),
                    None)
    return text.strip() if text and text.strip() else None
