"""Reading image bytes, hashing them, and decoding them the same way everywhere.

Bad images never stop a run: a missing or unreadable file, an undecodable or truncated one, or one
over the pixel limit becomes an error record. Grayscale, palette, CMYK and 16-bit images are
converted to RGB; transparent ones are composited on white; EXIF orientation is applied. A source's
filesystem refusing us (no credentials, no server at the endpoint, access denied: an UnreachableError
naming --source-options) is no image's fault: it ends the run in one line."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from cache_schemas import VlcacheError

from .readers import embedded
from .readers.remote import NO_OPTIONS, SourceOptions

MAX_PIXELS = 200_000_000  # ~14k x 14k; beyond this a decode costs gigabytes of RAM
# Part of each space's preprocessing spec: changing it changes the pixels an encoder sees.
LOAD_POLICY = {"alpha": "white", "exif_transpose": True, "max_pixels": MAX_PIXELS}


class ImageError(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Probe:
    uri: str
    hash: str | None = None
    width: int = 0
    height: int = 0
    stage: str | None = None  # set, with message, when the image is unusable
    message: str | None = None
    stamp: str | None = None  # the file's size and modification time (or ETag) when it was probed
    trusted: bool = False  # taken from an earlier probe of the same unchanged file, not read again


def read_bytes(uri: str, source_options: SourceOptions = NO_OPTIONS) -> bytes:
    """An image's bytes: a local path, an fsspec URL (tar://member::shard.tar included), or a table://
    URI naming bytes stored inside a Parquet or Arrow file; a remote one read with `source_options`."""
    try:
        if uri.startswith(embedded.SCHEME):
            return embedded.read_table_cell(uri, source_options)
        return source_options.read(uri)
    except VlcacheError:
        raise  # the filesystem refused us, or lacks its package: no image of it reads
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ImageError("read", f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None


def probe(uri: str, source_options: SourceOptions = NO_OPTIONS) -> Probe:
    """Hash an image's bytes and read its size from the header, without decoding the pixels."""
    try:
        data = read_bytes(uri, source_options)
        digest = hashlib.sha256(data).hexdigest()
        with _open(data) as image:
            width, height = image.size
        return Probe(uri, digest, width, height)
    except ImageError as exc:
        return Probe(uri, stage=exc.stage, message=str(exc))


def probe_many(uris: list[str], source_options: SourceOptions = NO_OPTIONS) -> list[Probe]:
    """One Dask task's worth of probes; lives here so workers need not import torch to run it."""
    return [probe(uri, source_options) for uri in uris]


def stamp_many(paths: list[str], source_options: SourceOptions = NO_OPTIONS) -> list[str | None]:
    """One Dask task's worth of `stamp`s."""
    return [stamp(path, source_options) for path in paths]


def file_of(uri: str) -> str:
    """The file an image's bytes live in: itself, or the tar shard or table holding it."""
    if uri.startswith(embedded.SCHEME):
        return embedded.table_path(uri)
    if uri.startswith("tar://") and "::" in uri:
        return uri.split("::", 1)[1]
    return uri


def stamp(path: str, source_options: SourceOptions = NO_OPTIONS) -> str | None:
    """Size and modification time of a local file, or size and ETag (else modification time) of an
    object: what says it is unchanged. None where it cannot be looked at (the probe then reads it)."""
    try:
        if "://" not in path:
            local = os.stat(path)
            return f"{local.st_size}:{local.st_mtime_ns}"
        info = source_options.info(path)
    except VlcacheError:
        raise
    except (OSError, ValueError):
        return None
    changed = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return f"{info.get('size')}:{changed}" if changed is not None else None


def decode(data: bytes, size: int) -> Image.Image:
    """Decode to an RGB image, using JPEG draft mode so huge JPEGs decode at a fraction of their size."""
    try:
        with _open(data) as image:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # keeps at least `size` on the short side
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated and corrupt data
        raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own limit applies below; PIL's warning would otherwise fire (and fail strict runs).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("decode", f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None
    if image.width * image.height > MAX_PIXELS:
        raise ImageError("decode", f"image too large: {image.width}x{image.height} exceeds {MAX_PIXELS} pixels")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grayscale
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 255.0)
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
