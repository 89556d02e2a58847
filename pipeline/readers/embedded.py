"""Images stored as bytes inside a table (Hugging Face's Parquet and `save_to_disk` Arrow files, e.g.
BiVLC), named by a URI so that they travel, hash and dedup exactly like files:

    table://<path of the .parquet or .arrow file>?column=<image column>&row=<row>

Images inside webdataset tar shards need no scheme of their own: fsspec's `tar://member::shard.tar`.
A worker keeps the last few row groups it read, so reading a table's images in row order costs one
pass over the file."""

from __future__ import annotations

import os
from functools import lru_cache
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEME = "table://"


def table_uri(path: str, column: str, row: int) -> str:
    return f"{SCHEME}{quote(os.path.abspath(path))}?column={quote(column)}&row={row}"


def table_path(uri: str) -> str:
    """The Parquet or Arrow file a table:// URI names a cell of."""
    parts = urlsplit(uri)
    return unquote(parts.netloc + parts.path)


def read_table_cell(uri: str) -> bytes:
    """The image bytes a table:// URI names; ValueError when the cell holds none."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    path, column, row = unquote(parts.netloc + parts.path), query["column"][0], int(query["row"][0])
    if path.endswith(".arrow"):
        value = _arrow_table(path)[column][row].as_py()
    else:
        group, offset = _row_group_of(path, row)
        value = _parquet_group(path, column, group)[offset]
    data = image_bytes(value)
    if data is None:
        raise ValueError(f"row {row} of column {column!r} holds no image bytes")
    return data


def image_bytes(value: object) -> bytes | None:
    """An image cell's bytes: Hugging Face's {"bytes": ..., "path": ...} struct, or raw bytes."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) and value else None


def is_image_column(field: pa.Field) -> bool:
    kind = field.type
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or (
        pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)


@lru_cache(maxsize=8)
def _arrow_table(path: str) -> pa.Table:
    """A `save_to_disk` Arrow file (IPC stream), memory-mapped: rows are read without copying."""
    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


@lru_cache(maxsize=16)
def _row_starts(path: str) -> np.ndarray:
    meta = pq.ParquetFile(path).metadata
    return np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])


def _row_group_of(path: str, row: int) -> tuple[int, int]:
    starts = _row_starts(path)
    group = int(np.searchsorted(starts, row, side="right")) - 1
    return group, row - int(starts[group])


@lru_cache(maxsize=4)
def _parquet_group(path: str, column: str, group: int) -> list:
    return pq.ParquetFile(path).read_row_group(group, columns=[column])[column].to_pylist()
