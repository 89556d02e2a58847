"""Where everything lives in a store, and the shape of every array.

    <store>/
      vlcache.json                         schema version, created-by
      datasets/<name>/manifest.json        written last: a dataset exists once this exists
      datasets/<name>/{items,images,texts,errors}.parquet
      spaces/<key>/space.json              the EmbeddingSpace spec plus its shard geometry
      spaces/<key>/embeddings.zarr/        Zarr v3 group: image_patches, image_cls, image_values,
                                           image_global, text_tokens (ragged, flat), text_global
      spaces/<key>/plans/<first-shard>.parquet   rows assigned to content, before encoding
      spaces/<key>/parts/{images,texts}/<shard>.parquet   commit records, one per encoded shard
      spaces/<key>/index/{images,texts}.json     the index: its segments and the shards each covers
      spaces/<key>/index/{images,texts}-<n>.parquet   a segment: the rows of the parts it covers
      spaces/<key>/index/{images,texts}.parquet  the index of schema 1.2 and before (one segment), read as one

A plan file covers consecutive shards, each holding rows of it: which shards a space has planned
is known from the files' names and footers, without reading their rows.

Shard s of a kind owns rows [s*R, (s+1)*R) of that kind's arrays (and, for texts, token rows
[s*R*C, (s+1)*R*C) of text_tokens, C the context length), so each Zarr shard has exactly one writer.
Rows a shard does not fill stay unwritten and cost no bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import InvalidSpecError
from .space import EmbeddingSpace

Kind = Literal["images", "texts"]
KINDS: tuple[Kind, ...] = ("images", "texts")

STORE_MANIFEST = "vlcache.json"
SPACE_SPEC = "space.json"
EMBEDDINGS = "embeddings.zarr"


def dataset_dir(name: str) -> str:
    return f"datasets/{name}"


def space_dir(key: str) -> str:
    return f"spaces/{key}"


def plan_path(key: str, kind: Kind, first_shard: int) -> str:
    return f"{space_dir(key)}/plans/{kind}-{first_shard:06d}.parquet"


def index_path(key: str, kind: Kind) -> str:
    """The one-file index of schema 1.2 and before."""
    return f"{space_dir(key)}/index/{kind}.parquet"


def index_manifest(key: str, kind: Kind) -> str:
    return f"{space_dir(key)}/index/{kind}.json"


def index_segment(key: str, kind: Kind, number: int) -> str:
    return f"{space_dir(key)}/index/{kind}-{number:06d}.parquet"


def part_path(key: str, kind: Kind, shard: int) -> str:
    return f"{space_dir(key)}/parts/{kind}/{shard:06d}.parquet"


@dataclass(frozen=True)
class Geometry:
    """How rows group into shards (the unit of work and commit) and chunks (the unit of reading)."""

    rows_per_shard: int = 1024
    chunk_rows: int = 32

    def __post_init__(self) -> None:
        if self.rows_per_shard < 1 or self.chunk_rows < 1 or self.rows_per_shard % self.chunk_rows:
            raise InvalidSpecError(
                f"rows_per_shard ({self.rows_per_shard}) must be a positive multiple of chunk_rows ({self.chunk_rows})"
            )

    @classmethod
    def for_shard_rows(cls, rows_per_shard: int) -> Geometry:
        chunk = next(c for c in (32, 16, 8, 4, 2, 1) if rows_per_shard % c == 0)
        return cls(rows_per_shard, chunk)

    def shard_of(self, row: int | np.ndarray) -> int | np.ndarray:
        """The shard of a row (or of each row of an array)."""
        return row // self.rows_per_shard

    def shard_rows(self, shard: int) -> range:
        return range(shard * self.rows_per_shard, (shard + 1) * self.rows_per_shard)

    def token_base(self, shard: int, context_length: int) -> int:
        """The first text_tokens row a text shard owns: room for a full context per text."""
        return shard * self.rows_per_shard * context_length

    def token_offsets(self, rows: np.ndarray, n_tokens: np.ndarray, context_length: int) -> np.ndarray:
        """Where each text's tokens go: packed back to back, in row order, from its shard's first token
        row. `rows` sorted; returns one offset per row."""
        rows, n_tokens = np.asarray(rows, np.int64), np.asarray(n_tokens, np.int64)
        if not len(rows):
            return np.empty(0, np.int64)
        shards = self.shard_of(rows)
        ends = np.cumsum(n_tokens)
        first = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])  # each shard's first text
        before_shard = np.repeat((ends - n_tokens)[first], np.diff(np.r_[first, len(rows)]))
        return shards * self.rows_per_shard * context_length + (ends - n_tokens - before_shard)


def token_rows(offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The text_tokens rows of texts with these offsets and token counts, back to back in their order."""
    offsets, lengths = np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if not total:
        return np.empty(0, np.int64)
    starts = np.repeat(offsets - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    return starts + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class ArrayLayout:
    """One Zarr array: its kind, the shape of one row, and whether it is the ragged token array. `dims`
    name every axis (Zarr's dimension_names, which xarray reads); `description` says what a row holds."""

    name: str
    kind: Kind
    row_shape: tuple[int, ...]
    dims: tuple[str, ...]
    description: str
    ragged: bool = False

    def chunks(self, space: EmbeddingSpace, geometry: Geometry) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(chunk shape, shard shape). A text_tokens chunk holds chunk_rows full contexts' worth of
        tokens, so one chunk usually covers several times chunk_rows real captions."""
        rows, shard = geometry.chunk_rows, geometry.rows_per_shard
        if self.ragged:
            rows, shard = rows * space.context_length, shard * space.context_length
        return (rows, *self.row_shape), (shard, *self.row_shape)

    def rows_for_shards(self, space: EmbeddingSpace, geometry: Geometry, n_shards: int) -> int:
        return n_shards * self.chunks(space, geometry)[1][0]


def array_layouts(space: EmbeddingSpace) -> tuple[ArrayLayout, ...]:
    """The arrays a space stores, derived from its spec."""
    d, p, e = space.token_dim, space.dims["patches"], space.dims["embed_dim"]
    where = "projected into the joint space" if space.projected else f"at layer {space.layer}, before projection"
    arrays = []
    if "patches" in space.image_tokens:
        arrays.append(ArrayLayout("image_patches", "images", (p, d), ("image_row", "patch", "token_dim"),
                                  f"patch tokens of the image tower, {where}"))
    if "cls" in space.image_tokens:
        arrays.append(ArrayLayout("image_cls", "images", (d,), ("image_row", "token_dim"),
                                  f"class token of the image tower, {where}"))
    if "values" in space.image_tokens:
        arrays.append(ArrayLayout("image_values", "images", (p, e), ("image_row", "patch", "embed_dim"),
                                  "value-path patch features in the joint space (MaskCLIP)"))
    arrays += [
        ArrayLayout("image_global", "images", (e,), ("image_row", "embed_dim"),
                    "L2-normalised global image embedding"),
        ArrayLayout("text_tokens", "texts", (space.text_token_dim,), ("token_row", "text_token_dim"),
                    f"tokens of every text, one row per real token (a text's rows: offset to offset + n_tokens), "
                    f"{where}", ragged=True),
        ArrayLayout("text_global", "texts", (e,), ("text_row", "embed_dim"), "L2-normalised global text embedding"),
    ]
    return tuple(arrays)
