"""What every reader returns: a source normalised into items that name their images by URI and
their captions by text. Hashing and dedup happen later, once, for every format."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cache_schemas import InvalidSourceError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RawItem:
    item_id: str
    image: str  # a local path or fsspec URL
    caption: str
    negative_captions: tuple[str, ...] = ()
    negative_images: tuple[str, ...] = ()
    subset: str = "default"
    type: str | None = None
    subtype: str | None = None
    split: str = "test"
    url: str | None = None  # where the image came from (img2dataset's url), when the source says
    key: str | None = None  # the source's own id of the sample (img2dataset's key)


@dataclass(frozen=True)
class Sidecar:
    """What a .json beside an image says, as img2dataset writes it (files and webdataset layouts):
    its caption (or "text"), url and key; None where absent."""

    caption: str | None = None
    url: str | None = None
    key: str | None = None

    @classmethod
    def parse(cls, raw: bytes | None) -> Sidecar:
        try:
            meta = json.loads(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(meta, dict):
            return cls()
        text = {k: v.strip() for k, v in meta.items() if isinstance(v, str) and v.strip()}
        key = meta.get("key")
        return cls(text.get("caption") or text.get("text"), text.get("url"),
                   str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else None)


@dataclass(frozen=True)
class ReaderOptions:
    """How to read a table: which columns hold the image and the caption, and (CSV) the separator.
    open_clip's training lists, for instance: image_column="filepath", caption_column="title", "\t"."""

    image_column: str = "image"
    caption_column: str = "caption"
    separator: str | None = None  # None: the format's own ("," for csv, tab for tsv)


@dataclass
class RawDataset:
    items: list[RawItem] = field(default_factory=list)
    extra_images: list[str] = field(default_factory=list)  # images no item names (an uncaptioned folder)
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # by image URI
    segments: dict[str, list[str]] = field(default_factory=dict)  # by caption text
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why): entries the source could not make

    def image_uris(self) -> list[str]:
        """Every image the dataset names, once each, in first-mention order."""
        seen: dict[str, None] = {}
        for item in self.items:
            seen.setdefault(item.image, None)
            for uri in item.negative_images:
                seen.setdefault(uri, None)
        for uri in self.extra_images:
            seen.setdefault(uri, None)
        return list(seen)

    def texts(self) -> list[str]:
        """Every caption, negative caption and caption segment, once each, ordered like the images
        that name them: rows are assigned in this order, so a caption's tokens land near its image's
        patches and a trainer reading chunk by chunk finds both in the chunks it holds."""
        image_order = {uri: i for i, uri in enumerate(self.image_uris())}
        seen: dict[str, None] = {}
        for item in sorted(self.items, key=lambda it: image_order[it.image]):
            for text in (item.caption, *item.negative_captions):
                seen.setdefault(text, None)
                for segment in self.segments.get(text, ()):
                    seen.setdefault(segment, None)
        return list(seen)


def resolve(path: str, root: str | None) -> str:
    """An image reference made absolute against `root` (or left alone when it is already a URL/absolute)."""
    if "://" in path or os.path.isabs(path) or root is None:
        return path
    return os.path.join(root, path) if "://" in root else os.path.abspath(os.path.join(root, path))


def require_columns(columns: Sequence[str], needed: Sequence[str], source: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InvalidSourceError(f"{source} lacks column(s) {missing}; it has {list(columns)}")


def caption_text(value: object, where: str) -> str:
    """A caption, as every reader accepts it: a text with something besides whitespace (kept as is)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidSourceError(f"{where}: the caption must be a non-empty text, got {value!r}")
    return value


def as_text_list(value: object, where: str) -> tuple[str, ...]:
    """A field that holds one text, a list of texts, or nothing."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise InvalidSourceError(f"{where}: expected a text or a list of texts, got {type(value).__name__}")
