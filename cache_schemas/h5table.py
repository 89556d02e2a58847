"""Arrow tables as HDF5 groups that plain h5py (or any HDF5 reader) reads without pyarrow:
one dataset per column.

    <table>                      attrs: columns (a JSON list, in order), num_rows
    <table>/<column>             (N,) a primitive column: variable-length UTF-8 strings, or numbers
    <table>/<column>/offsets     a list column is a group: (N+1,) int64, row i's values are
    <table>/<column>/values        values[offsets[i]:offsets[i+1]] (values is itself a column, so lists nest)
    <table>/<column>             (N, k) a fixed-size list column (a box's 4 numbers)
    <table>/<column>.valid       (N,) bool, only when the column has nulls: False where the value is null

A null slot holds "", 0 or an empty list, so the mask is the only place nulls are told apart (a null
type and an empty string differ, and a dataset's fingerprint sees the difference)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa

STRING = h5py.string_dtype("utf-8")


def write_table(parent: h5py.Group, name: str, table: pa.Table) -> None:
    group = parent.create_group(name)
    group.attrs["columns"] = json.dumps(table.column_names)
    group.attrs["num_rows"] = table.num_rows
    for field in table.schema:
        _write_column(group, field.name, table.column(field.name).combine_chunks())


def read_table(parent: h5py.Group, name: str, schema: pa.Schema) -> pa.Table:
    """The columns of `schema` the group holds, typed by `schema` (the caller conforms the result:
    a nullable column the file lacks becomes nulls, a required one is refused). Raises KeyError,
    ValueError or TypeError for a group that does not follow the layout."""
    group = parent[name]
    rows = int(group.attrs["num_rows"])
    columns = {f.name: _read_column(group, f.name, f.type, rows) for f in schema if f.name in group}
    return pa.table(columns) if columns else pa.table({"_rows": pa.nulls(rows)})


def _write_column(group: h5py.Group, name: str, array: pa.Array) -> None:
    if array.null_count:
        group.create_dataset(f"{name}.valid", data=array.is_valid().to_numpy(zero_copy_only=False))
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        group.create_dataset(name, data=_fixed_rows(array))
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        sub = group.create_group(name)
        lengths = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        sub.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        _write_column(sub, "values", array.flatten())  # flatten leaves out the values of null slots
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        group.create_dataset(name, data=np.array(array.fill_null("").to_pylist(), dtype=object), dtype=STRING)
    elif pa.types.is_boolean(kind):
        group.create_dataset(name, data=array.fill_null(False).to_numpy(zero_copy_only=False))
    else:
        group.create_dataset(name, data=array.fill_null(0).to_numpy(zero_copy_only=False))


def _fixed_rows(array: pa.FixedSizeListArray) -> np.ndarray:
    """(N, k) numbers; a null row is zeros."""
    size = array.type.list_size
    out = np.zeros((len(array), size), dtype=array.type.value_type.to_pandas_dtype())
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    out[valid] = array.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, size)
    return out


def _read_column(group: h5py.Group, name: str, kind: pa.DataType, rows: int) -> pa.Array:
    node = group[name]
    mask = ~group[f"{name}.valid"][()].astype(bool) if f"{name}.valid" in group else None
    if mask is not None and mask.shape != (rows,):
        raise ValueError(f"{node.name}.valid has shape {mask.shape}, expected ({rows},)")
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = node["offsets"][()].astype(np.int64)
        _check_offsets(node.name, offsets, rows)
        values = _read_column(node, "values", kind.value_type, int(offsets[-1]))
        offset_type = pa.int64() if pa.types.is_large_list(kind) else pa.int32()
        return pa.ListArray.from_arrays(pa.array(offsets, offset_type), values, type=kind, mask=_mask(mask))
    data = node.asstr()[()] if h5py.check_string_dtype(node.dtype) else node[()]
    expected = (rows, kind.list_size) if pa.types.is_fixed_size_list(kind) else (rows,)
    if data.shape != expected:
        raise ValueError(f"{node.name} has shape {data.shape}, expected {expected}")
    if pa.types.is_fixed_size_list(kind):
        values = pa.array(data.reshape(-1), kind.value_type)
        return pa.FixedSizeListArray.from_arrays(values, type=kind, mask=_mask(mask))
    return pa.array(data.tolist() if data.dtype == object else data, kind, mask=mask)


def _check_offsets(where: str, offsets: np.ndarray, rows: int) -> None:
    if offsets.shape != (rows + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        raise ValueError(f"{where}/offsets must be {rows + 1} non-decreasing offsets from 0")


def _mask(mask: np.ndarray | None) -> pa.Array | None:
    return None if mask is None else pa.array(mask)
