"""Images stored as bytes inside a table (Hugging Face's Parquet and `save_to_disk` Arrow files, e.g.
BiVLC; img2dataset's Parquet output), named by a URI so that they travel, hash and dedup exactly like files:

    table://<path or URL of the .parquet or .arrow file>?column=<image column>&row=<row>

Images inside webdataset tar shards need no scheme of their own: fsspec's `tar://member::shard.tar`.
A worker keeps the last few row groups it read, so reading a table's images in row order costs one
pass over the file; a remote file is opened with the source's options (--source-options)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cache_schemas.location import arrow_threads, parquet_file

from .base import resolve
from .remote import NO_OPTIONS, SourceOptions, absolute

SCHEME = "table://"


def table_uri(path: str, column: str, row: int) -> str:
    return f"{SCHEME}{quote(absolute(path))}?column={quote(column)}&row={row}"


def table_path(uri: str) -> str:
    """The Parquet or Arrow file a table:// URI names a cell of."""
    parts = urlsplit(uri)
    return unquote(parts.netloc + parts.path)


def read_table_cell(uri: str, source_options: SourceOptions = NO_OPTIONS) -> bytes:
    """The image bytes a table:// URI names; ValueError when the cell holds none."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    path, column, row = unquote(parts.netloc + parts.path), query["column"][0], int(query["row"][0])
    if path.endswith(".arrow"):
        value = _arrow_table(path, source_options)[column][row].as_py()
    else:
        group, offset = _row_group_of(path, row, source_options)
        value = _parquet_group(path, column, group, source_options)[offset]
    data = image_bytes(value)
    if data is None:
        raise ValueError(f"row {row} of column {column!r} holds no image bytes")
    return data


def image_cells(path: str, column: pa.ChunkedArray, name: str, root: str) -> list[str | None]:
    """Each row's image in an image column of the file at `path` (the column is `name` there): a
    table:// URI where the cell holds bytes; where it holds only a path (`Dataset.to_parquet` writes
    {"bytes": None, "path": ...} for images cast from file paths), that path, resolved against `root`;
    None where it holds neither."""
    struct = pa.types.is_struct(column.type)
    data = pc.struct_field(column, "bytes") if struct else column
    has_bytes = ([False] * len(column) if pa.types.is_null(data.type)  # a column of paths only
                 else pc.fill_null(pc.greater(pc.binary_length(data), 0), False).to_pylist())
    paths = (pc.struct_field(column, "path").to_pylist() if struct and column.type.get_field_index("path") >= 0
             else [None] * len(column))
    return [table_uri(path, name, row) if found else resolve(where, root) if where else None
            for row, (found, where) in enumerate(zip(has_bytes, paths))]


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
def _arrow_table(path: str, source_options: SourceOptions) -> pa.Table:
    """A `save_to_disk` Arrow file (IPC stream), memory-mapped where it is local: rows are read without
    copying (a remote one is read whole)."""
    with source_options.input(path) as file:
        return pa.ipc.open_stream(pa.memory_map(file) if isinstance(file, str) else file).read_all()


@lru_cache(maxsize=16)
def _row_starts(path: str, source_options: SourceOptions) -> np.ndarray:
    with source_options.input(path) as file:
        meta = parquet_file(file).metadata
    return np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])


def _row_group_of(path: str, row: int, source_options: SourceOptions) -> tuple[int, int]:
    starts = _row_starts(path, source_options)
    group = int(np.searchsorted(starts, row, side="right")) - 1
    return group, row - int(starts[group])


@lru_cache(maxsize=4)
def _parquet_group(path: str, column: str, group: int, source_options: SourceOptions) -> list:
    with source_options.input(path) as file:
        group_table = parquet_file(file).read_row_group(group, columns=[column], use_threads=arrow_threads(file))
        return group_table[column].to_pylist()  # a remote (fsspec) file read in this thread: arrow_threads says why
