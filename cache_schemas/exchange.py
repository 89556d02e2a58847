"""One dataset of a store with its embeddings in one space, out of the store and back.

Two formats. `hdf5` holds everything another store needs to take the dataset and its rows (the tables,
the space's spec, every array of every unique image and text, each row tied to its content hash), in a
layout plain h5py reads (cache_schemas/README.md, "Export and import"). `clip-retrieval` is one row per
item, the global embeddings of its image and its caption, as clip-retrieval's index builder reads them.
`ExportFile` opens an HDF5 export and checks it before anything is written from it (the import itself
is pipeline/importer.py: it plans and commits shards). Both directions stream a block of rows at a
time: memory is bounded by BLOCK_BYTES, not by the dataset's size."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import tables
from .embeddings import SpaceEmbeddings
from .errors import ExportFileError, VlcacheError
from .h5table import STRING, read_table, write_table
from .layout import KINDS, ArrayLayout, Geometry, Kind, array_layouts, token_rows
from .space import EmbeddingSpace
from .store import DatasetTables, Store
from .version import SCHEMA_VERSION, parse_schema_version

FORMAT = "vlcache-export"  # the root attribute `format` of every HDF5 export
EXPORT_VERSION = 1  # the HDF5 layout's own version: bumped when a reader of this one would misread a file
FORMATS = ("hdf5", "clip-retrieval")
TABLES = {"items": tables.ITEMS, "images": tables.DATASET_IMAGES, "texts": tables.DATASET_TEXTS,
          "errors": tables.ERRORS}
HASHES: dict[Kind, str] = {"images": "image_hash", "texts": "text_hash"}
BLOCK_BYTES = 64 << 20  # rows read or written at once: the memory bound of export and import
CHUNK_BYTES = 1 << 20  # HDF5 chunks of about this size: small enough to read a few rows cheaply
COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}  # gzip: every HDF5 build reads it


@dataclass
class ExportSummary:
    dataset: str
    space: str
    out: str
    format: str
    rows: dict[str, int]  # what was written: images and texts (hdf5), or items (clip-retrieval)
    left_out: dict[str, int]  # the dataset's content (or items) without embeddings in the space

    def lines(self) -> list[str]:
        wrote = ", ".join(f"{n} {what}" for what, n in self.rows.items())
        lines = [f"exported dataset {self.dataset} (space {self.space}) as {self.format} to {self.out}: {wrote}"]
        if any(self.left_out.values()):
            lacking = ", ".join(f"{n} {what}" for what, n in self.left_out.items() if n)
            lines.append(f"left out {lacking} without embeddings in the space (extract them first to include them)")
        return lines


# -- choosing what to export -----------------------------------------------------------------------

def _present(space: SpaceEmbeddings, kind: Kind, hashes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The hashes the space holds rows for, and their rows, in row order (reads then walk the arrays
    forward, each chunk decoded once)."""
    rows = space.rows(kind, hashes)
    order = _found_in_order(rows)
    return [hashes[i] for i in order], rows[order]


def _found_in_order(rows: np.ndarray) -> np.ndarray:
    """Positions of the rows that are not -1, sorted by row."""
    order = np.argsort(rows, kind="stable")
    return order[rows[order] >= 0]


# -- HDF5 ------------------------------------------------------------------------------------------

def export_hdf5(store: Store, dataset: str, space_key: str | None, out: str) -> ExportSummary:
    """Write `dataset`'s tables and its content's rows in the space to the HDF5 file `out` (replaced
    whole: the file appears only once complete)."""
    data = store.dataset(dataset)
    space = store.space_or_only(space_key)
    present = {kind: _present(space, kind, _content(data, kind)["hash"].to_pylist()) for kind in KINDS}
    _require_some(space, dataset, sum(len(hashes) for hashes, _ in present.values()))
    with _replaced(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(_header(data, space))
        group = f.create_group("tables")
        for name in TABLES:
            write_table(group, name, getattr(data, name))
        embeddings = f.create_group("embeddings")
        _write_images(embeddings, space, *present["images"])
        _write_texts(embeddings, space, *present["texts"])
    counts = {kind: len(present[kind][0]) for kind in KINDS}
    return ExportSummary(dataset, space.key, out, "hdf5", counts,
                         {kind: _content(data, kind).num_rows - counts[kind] for kind in KINDS})


def _content(data: DatasetTables, kind: Kind) -> pa.Table:
    return data.images if kind == "images" else data.texts


def _require_some(space: SpaceEmbeddings, dataset: str, found: int) -> None:
    if not found:
        raise ExportFileError(f"space {space.key} holds no embeddings of dataset {dataset}; "
                              f"extract it into that space first")


def _header(data: DatasetTables, space: SpaceEmbeddings) -> dict[str, Any]:
    """Root attributes: plain strings and numbers, JSON where the value is structured."""
    return {
        "format": FORMAT, "export_version": EXPORT_VERSION, "schema_version": SCHEMA_VERSION,
        "vlcache_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": data.name, "dataset_source": json.dumps(data.manifest.get("source", {})),
        "space": json.dumps(space.spec.to_json()), "space_key": space.key,
        "geometry": json.dumps(asdict(space.geometry)),
    }


def _version() -> str:
    try:
        return metadata.version("vlcache")
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_images(group: h5py.Group, space: SpaceEmbeddings, hashes: list[str], rows: np.ndarray) -> None:
    group.create_dataset(HASHES["images"], data=np.array(hashes, dtype=object), dtype=STRING)
    for name in space.arrays("images"):
        out = _create(group, name, (len(rows), *space.layouts[name].row_shape), space.spec.dtype)
        for start, stop in _blocks(len(rows), _row_bytes(out)):
            out[start:stop] = space.read(name, rows[start:stop])


def _write_texts(group: h5py.Group, space: SpaceEmbeddings, hashes: list[str], rows: np.ndarray) -> None:
    """Tokens back to back in the file's text order: text i's are values[offsets[i]:offsets[i+1]]."""
    group.create_dataset(HASHES["texts"], data=np.array(hashes, dtype=object), dtype=STRING)
    lengths = space.token_spans(rows)[1]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = group.create_group("text_tokens")
    tokens.create_dataset("offsets", data=offsets)
    values = _create(tokens, "values", (int(offsets[-1]), space.spec.text_token_dim), space.spec.dtype)
    per_text = space.spec.context_length * values.dtype.itemsize * space.spec.text_token_dim  # at most
    for start, stop in _blocks(len(rows), per_text):
        values[offsets[start]:offsets[stop]] = space.read_tokens(rows[start:stop])[0]
    pooled = _create(group, "text_global", (len(rows), space.spec.dims["embed_dim"]), space.spec.dtype)
    for start, stop in _blocks(len(rows), _row_bytes(pooled)):
        pooled[start:stop] = space.read("text_global", rows[start:stop])


def _create(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> h5py.Dataset:
    """A chunked, compressed dataset of rows. Resizable along rows: HDF5 refuses a chunk taller than
    a fixed dataset, and an empty dataset still needs a chunk shape."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    chunk_rows = max(1, min(max(shape[0], 1), CHUNK_BYTES // max(row_bytes, 1)))
    return group.create_dataset(name, shape=shape, maxshape=(None, *shape[1:]), dtype=dtype,
                                chunks=(chunk_rows, *shape[1:]), **COMPRESSION)


def _row_bytes(array: h5py.Dataset | np.ndarray) -> int:
    return int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize


def _blocks(n: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of n rows, each holding at most BLOCK_BYTES of rows of `row_bytes`."""
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for start in range(0, n, step):
        yield start, min(start + step, n)


@contextmanager
def _replaced(out: str) -> Iterator[str]:
    """A temporary path beside `out`, moved onto it once written; removed if writing fails."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb"):
            pass
    except OSError as exc:
        raise ExportFileError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- clip-retrieval ----------------------------------------------------------------------------------

def export_clip_retrieval(store: Store, dataset: str, space_key: str | None, out_dir: str) -> ExportSummary:
    """clip-retrieval's layout: img_emb/img_emb_0.npy and text_emb/text_emb_0.npy (the global
    embeddings of each item's image and caption, in the space's dtype) and metadata/metadata_0.parquet,
    row for row. Items whose image or caption has no row in the space are left out."""
    data = store.dataset(dataset)
    space = store.space_or_only(space_key)
    items = data.items
    image_rows = space.rows("images", items["image"].to_pylist())
    text_rows = space.rows("texts", items["caption"].to_pylist())
    keep = (image_rows >= 0) & (text_rows >= 0)
    _require_some(space, dataset, int(keep.sum()))
    paths = {sub: os.path.join(out_dir, sub, f"{sub}_0.{ext}")
             for sub, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet"))}
    for path in paths.values():
        _mkdir(os.path.dirname(path))
    with _replaced(paths["img_emb"]) as img, _replaced(paths["text_emb"]) as txt, \
            _replaced(paths["metadata"]) as meta:
        _write_npy(img, space, "image_global", image_rows[keep])
        _write_npy(txt, space, "text_global", text_rows[keep])
        pq.write_table(_clip_metadata(data, items.filter(pa.array(keep))), meta)
    return ExportSummary(dataset, space.key, out_dir, "clip-retrieval", {"items": int(keep.sum())},
                         {"items": int((~keep).sum())})


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ExportFileError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_npy(path: str, space: SpaceEmbeddings, name: str, rows: np.ndarray) -> None:
    """A .npy filled a block at a time through a memory map, so the array is never whole in memory."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=space.spec.dtype,
                                    shape=(len(rows), space.spec.dims["embed_dim"]))
    for start, stop in _blocks(len(rows), _row_bytes(out)):
        out[start:stop] = space.read(name, rows[start:stop])
    out.flush()
    del out


def _clip_metadata(data: DatasetTables, items: pa.Table) -> pa.Table:
    """One row per exported item: clip-retrieval's `image_path` and `caption`, and the item's own fields."""
    uris = dict(zip(data.images["hash"].to_pylist(), data.images["uri"].to_pylist()))
    texts = dict(zip(data.texts["hash"].to_pylist(), data.texts["text"].to_pylist()))
    return pa.table({
        "item_id": items["item_id"],
        "image_path": pa.array([uris[h] for h in items["image"].to_pylist()], pa.string()),
        "caption": pa.array([texts[h] for h in items["caption"].to_pylist()], pa.string()),
        "subset": items["subset"], "type": items["type"], "subtype": items["subtype"], "split": items["split"],
        "image_hash": items["image"], "caption_hash": items["caption"],
    })


# -- reading an HDF5 export back ---------------------------------------------------------------------

@dataclass
class Content:
    """What a file holds embeddings for, as the planner reads a dataset: `images` and `texts` tables."""

    images: pa.Table
    texts: pa.Table


class ExportFile:
    """An HDF5 export, opened and checked: its header, tables and the shapes of its arrays. Values are
    read on demand, a window of rows at a time; `check_values` reads those about to be written."""

    def __init__(self, path: str, handle: h5py.File):
        self.path = path
        self.handle = handle
        attrs = handle.attrs
        if attrs.get("format") != FORMAT:
            raise ExportFileError(f"{path} is not a vlcache export (its root has no format attribute {FORMAT!r})")
        if int(attrs.get("export_version", 0)) != EXPORT_VERSION:
            raise ExportFileError(f"{path} has export version {attrs.get('export_version')}; this vlcache reads "
                                  f"version {EXPORT_VERSION}")
        parse_schema_version(attrs["schema_version"])
        self.dataset: str = str(attrs["dataset"])
        self.source: dict = json.loads(attrs.get("dataset_source", "{}"))
        self.spec = EmbeddingSpace.from_json(json.loads(attrs["space"]))
        self.geometry = Geometry(**json.loads(attrs["geometry"]))
        self.tables = {name: tables.conform(read_table(handle["tables"], name, schema), schema, f"tables/{name}")
                       for name, schema in TABLES.items()}
        self.hashes: dict[Kind, list[str]] = {k: handle["embeddings"][HASHES[k]].asstr()[()].tolist() for k in KINDS}
        self._rows = {kind: {h: i for i, h in enumerate(hashes)} for kind, hashes in self.hashes.items()}
        self.offsets = handle["embeddings/text_tokens/offsets"][()].astype(np.int64)
        self._check()

    @classmethod
    @contextmanager
    def open(cls, path: str) -> Iterator[ExportFile]:
        """Open and check `path`; every way a file can fail to be an export is one ExportFileError."""
        if not os.path.isfile(path):
            raise ExportFileError(f"no such file: {path}")
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise ExportFileError(f"{path} cannot be read as HDF5 ({exc})") from None
        try:
            yield cls._checked(path, handle)
        finally:
            handle.close()

    @classmethod
    def _checked(cls, path: str, handle: h5py.File) -> ExportFile:
        try:
            return cls(path, handle)
        except ExportFileError:
            raise
        except VlcacheError as exc:  # a bad spec, schema version or table: said with the file's name
            raise ExportFileError(f"{path}: {exc}") from None
        except (KeyError, IndexError, ValueError, TypeError, OSError) as exc:
            raise ExportFileError(f"{path} does not follow the vlcache export layout ({type(exc).__name__}: "
                                  f"{exc})") from None

    # -- the checks made on opening: shapes, dtypes, hashes; cheap, no array values read

    def _check(self) -> None:
        for kind in KINDS:
            if len(self._rows[kind]) != len(self.hashes[kind]):
                raise ValueError(f"embeddings/{HASHES[kind]} lists a hash twice")
            unknown = set(self.hashes[kind]) - set(self.tables[kind]["hash"].to_pylist())
            if unknown:
                raise ValueError(f"embeddings/{HASHES[kind]} has {len(unknown)} hashes not in tables/{kind}")
        texts = self.tables["texts"]
        if texts["hash"].to_pylist() != [tables.text_hash(t) for t in texts["text"].to_pylist()]:
            raise ValueError("tables/texts: a hash is not the sha256 of its text")
        lengths = np.diff(self.offsets)
        if self.offsets.shape != (len(self.hashes["texts"]) + 1,) or self.offsets[0] != 0 or (lengths < 1).any() \
                or (lengths > self.spec.context_length).any():
            raise ValueError(f"embeddings/text_tokens/offsets must give each text 1 to {self.spec.context_length} "
                             f"tokens (the space's context length)")
        for layout in array_layouts(self.spec):
            self._check_array(layout)

    def _check_array(self, layout: ArrayLayout) -> None:
        node = self.dataset_of(layout.name)
        rows = int(self.offsets[-1]) if layout.ragged else len(self.hashes[layout.kind])
        expected = (rows, *layout.row_shape)
        if node.shape != expected or node.dtype != np.dtype(self.spec.dtype):
            raise ValueError(f"{node.name} is {node.dtype} {node.shape}; space {self.spec.key} needs "
                             f"{self.spec.dtype} {expected}")

    def dataset_of(self, name: str) -> h5py.Dataset:
        return self.handle[f"embeddings/{name}/values" if name == "text_tokens" else f"embeddings/{name}"]

    # -- what the importer asks

    def content(self) -> Content:
        """The tables' images and texts that have embeddings here, in the file's order: planned in that
        order, a shard's rows are read from the file as a few slices."""
        def present(kind: Kind) -> pa.Table:
            table = self.tables[kind]
            return table.take(pa.array(_found_in_order(self.index(kind, table["hash"].to_pylist()))))

        return Content(present("images"), present("texts"))

    def index(self, kind: Kind, hashes: Sequence[str]) -> np.ndarray:
        """File rows of the hashes; -1 where the file has no embeddings for one."""
        rows = self._rows[kind]
        return np.fromiter((rows.get(h, -1) for h in hashes), dtype=np.int64, count=len(hashes))

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's number of tokens, as the file stores them (the planner's tokenizer, no model needed)."""
        index = self.index("texts", [tables.text_hash(t) for t in texts])
        return (self.offsets[index + 1] - self.offsets[index]).astype(np.int32)

    def read(self, name: str, index: np.ndarray) -> np.ndarray:
        """Rows `index` (any order) of an image array or text_global."""
        return _take(self.dataset_of(name), np.asarray(index, dtype=np.int64))

    def read_tokens(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The texts' tokens back to back, in the order asked, and each text's count."""
        index = np.asarray(index, dtype=np.int64)
        starts, lengths = self.offsets[index], np.diff(self.offsets)[index]
        return _take(self.dataset_of("text_tokens"), token_rows(starts, lengths)), lengths

    def check_values(self, kind: Kind, index: np.ndarray) -> None:
        """Refuse rows a store would read back as damage: all zeros, or not finite (store readers check
        this too, but after a commit it would be the store that is broken, not the file)."""
        index = np.sort(np.asarray(index, dtype=np.int64))
        for layout in array_layouts(self.spec):
            if layout.kind != kind:
                continue
            per_row = int(np.prod(layout.row_shape)) * np.dtype(self.spec.dtype).itemsize
            per_row *= self.spec.context_length if layout.ragged else 1
            for start, stop in _blocks(len(index), per_row):
                block = index[start:stop]
                data, lengths = self.read_tokens(block) if layout.ragged else (self.read(layout.name, block), None)
                self.check_block(layout.name, kind, block, data, lengths)

    def check_block(self, name: str, kind: Kind, index: np.ndarray, data: np.ndarray,
                    lengths: np.ndarray | None = None) -> None:
        """`check_values` on rows already read: `data` holds rows `index` of `name` (for text_tokens,
        the texts' tokens back to back, `lengths` each)."""
        flat = data.reshape(len(data), -1)
        bad = ~flat.any(axis=1) | ~np.isfinite(flat).all(axis=1)
        if bad.any():
            owner = np.repeat(index, lengths) if lengths is not None else index
            which = self.hashes[kind][int(owner[np.argmax(bad)])]
            raise ExportFileError(f"{self.path}: {name} of {kind[:-1]} {which} holds zeros or non-finite numbers, "
                                  "which no store row may hold")


def _take(dataset: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """Rows `index` of an HDF5 dataset, in the order asked. Sorted, then read as slices of at most
    BLOCK_BYTES that each cover a run of wanted rows: h5py's point selection is slow for many rows."""
    out = np.empty((len(index), *dataset.shape[1:]), dtype=dataset.dtype)
    order = np.argsort(index, kind="stable")
    wanted = index[order]
    span = max(1, BLOCK_BYTES // max(1, _row_bytes(dataset)))
    start = 0
    while start < len(wanted):
        first = int(wanted[start])
        stop = int(np.searchsorted(wanted, first + span, side="left"))
        block = dataset[first:int(wanted[stop - 1]) + 1]
        out[order[start:stop]] = block[wanted[start:stop] - first]
        start = stop
    return out
