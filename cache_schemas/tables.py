"""Arrow schemas of the store's tables, and their validation.

Content is addressed by hash (sha256 hex of an image file's bytes, or of a text's UTF-8), so items
of any dataset refer to the same image or caption across datasets and embedding spaces. Rows are
per space: `row` indexes that space's Zarr arrays."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from .errors import InvalidSpecError

HASH = pa.string()  # sha256 hex: readable in any Parquet viewer, dictionary-encoded on disk

# A dataset's own content, written once when the dataset is registered.
DATASET_IMAGES = pa.schema([
    pa.field("hash", HASH, nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    # Ground-truth regions (x0, y0, x1, y1 in pixels) when the source knows them: the diagnostic's regions.
    pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
])
DATASET_TEXTS = pa.schema([
    pa.field("hash", HASH, nullable=False),
    pa.field("text", pa.string(), nullable=False),
    # The caption's segments (an object with its attributes, a relation), when the source knows them.
    pa.field("segments", pa.list_(pa.string())),
])
ITEMS = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("subset", pa.string(), nullable=False),
    pa.field("type", pa.string()),
    pa.field("subtype", pa.string()),
    pa.field("split", pa.string(), nullable=False),
    pa.field("image", HASH),  # null when the source's image could not be read (see errors)
    pa.field("caption", HASH, nullable=False),
    pa.field("negative_captions", pa.list_(HASH), nullable=False),
    pa.field("negative_images", pa.list_(HASH), nullable=False),
    # Since 1.4, where the source says: where the image came from, and the source's own id of the sample
    # (img2dataset's url and key).
    pa.field("url", pa.string()),
    pa.field("key", pa.string()),
])
# Optional columns added after a table's first version: left out of a dataset's fingerprint while they
# hold nothing, so a dataset registered before they existed keeps its fingerprint.
LATER_COLUMNS = {"items": ("url", "key")}
# What the last extraction saw of each image file (size and modification time, or an object's ETag),
# with what its probe found: a rerun trusts the hash of a file whose stamp is unchanged instead of
# reading it again. A cache of the source, not part of the dataset's content or fingerprint.
STAMPS = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("stamp", pa.string(), nullable=False),
    pa.field("hash", HASH, nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
])
ERRORS = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # source (an entry the reader skipped) | read | decode
    pa.field("message", pa.string(), nullable=False),
])

# Per space: what each committed shard holds. A part file is the shard's commit record.
IMAGE_PART = pa.schema([
    pa.field("hash", HASH, nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("error", pa.string()),  # null when encoded; the row then holds no embedding
])
TEXT_PART = pa.schema([
    pa.field("hash", HASH, nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("n_tokens", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),  # first row of the text's tokens in text_tokens
    pa.field("row", pa.int64(), nullable=False),
    pa.field("error", pa.string()),
])

# The read API's views of a space: committed rows without errors.
IMAGES = pa.schema([IMAGE_PART.field(n) for n in ("hash", "uri", "width", "height", "row")])
TEXTS = pa.schema([TEXT_PART.field(n) for n in ("hash", "text", "n_tokens", "offset", "row")])


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprinted(name: str, table: pa.Table) -> pa.Table:
    """The part of a conformed table a dataset's fingerprint covers (see LATER_COLUMNS)."""
    empty = [c for c in LATER_COLUMNS.get(name, ()) if c in table.column_names and table[c].null_count == len(table)]
    return table.drop_columns(empty)


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Return `table` with exactly `schema`'s columns, in order, refusing what cannot be cast."""
    missing = [f.name for f in schema if f.name not in table.column_names and not f.nullable]
    if missing:
        raise InvalidSpecError(f"table {name} lacks required columns {missing}")
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(len(table), f.type))
            continue
        column = table.column(f.name)
        try:
            column = column.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InvalidSpecError(f"table {name}: column {f.name} is {column.type}, expected {f.type}") from exc
        if not f.nullable and column.null_count:
            raise InvalidSpecError(f"table {name}: column {f.name} has {column.null_count} nulls")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
