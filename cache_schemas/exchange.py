"""One dataset of a store with its embeddings in one space, out of the store and back.

Two formats. `hdf5` holds everything another store needs to take the dataset and its rows (the tables,
the space's spec, every array of every unique image and text, each row tied to its content hash), in a
layout plain h5py reads (cache_schemas/README.md, "Export and import"). `clip-retrieval` is the global
embeddings of the items' unique images and unique captions, each with its metadata, in the folders
clip-retrieval's `clip inference` writes (autofaiss and `clip back` take them as they are). An export
never overwrites what exists unless forced, and replaces it only once complete. `ExportFile` opens an
HDF5 export and checks it before anything is written from it (the import itself is
pipeline/importer.py: it plans and commits shards). Both directions stream a block of rows at a time:
memory is bounded by BLOCK_BYTES, not by the dataset's size."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import h5file, tables
from .embeddings import SpaceEmbeddings
from .errors import ExportFileError, VlcacheError, disk_full_as_error, is_disk_full
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
    rows: dict[str, int]  # what was written: images and texts (clip-retrieval: the items' unique ones)
    left_out: dict[str, int]  # those without embeddings in the space

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

def export_hdf5(store: Store, dataset: str, space_key: str | None, out: str, force: bool = False) -> ExportSummary:
    """Write `dataset`'s tables and its content's rows in the space to the HDF5 file `out`. An existing
    `out` is refused unless `force`, and then replaced only by a complete file (`_replaced`)."""
    _check_out(store, out)
    with _replaced(out, force) as tmp:
        data = store.dataset(dataset)
        space = store.space_or_only(space_key)
        present = {kind: _present(space, kind, _content(data, kind)["hash"].to_pylist()) for kind in KINDS}
        _require_some(space, dataset, sum(len(hashes) for hashes, _ in present.values()))
        with h5file.written(tmp) as (f, output):
            f.attrs.update(_header(data, space))
            group = f.create_group("tables")
            for name in TABLES:
                write_table(group, name, getattr(data, name))
                output.check()
            embeddings = f.create_group("embeddings")
            _write_images(embeddings, space, *present["images"], output.check)
            _write_texts(embeddings, space, *present["texts"], output.check)
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


def _write_images(group: h5py.Group, space: SpaceEmbeddings, hashes: list[str], rows: np.ndarray,
                  check: Callable[[], None]) -> None:
    """`check`, after each block: raises what made the file's writes fail (`h5file.Output`)."""
    group.create_dataset(HASHES["images"], data=np.array(hashes, dtype=object), dtype=STRING)
    for name in space.arrays("images"):
        out = _create(group, name, (len(rows), *space.layouts[name].row_shape), space.spec.dtype)
        for start, stop in _blocks(len(rows), _row_bytes(out)):
            out[start:stop] = space.read(name, rows[start:stop])
            check()


def _write_texts(group: h5py.Group, space: SpaceEmbeddings, hashes: list[str], rows: np.ndarray,
                 check: Callable[[], None]) -> None:
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
        check()
    pooled = _create(group, "text_global", (len(rows), space.spec.dims["embed_dim"]), space.spec.dtype)
    for start, stop in _blocks(len(rows), _row_bytes(pooled)):
        pooled[start:stop] = space.read("text_global", rows[start:stop])
        check()


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
    step = _block_rows(row_bytes)
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _block_rows(row_bytes: int) -> int:
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


# -- writing beside the output, then swapping -------------------------------------------------------

def _check_out(store: Store, out: str) -> None:
    """Refuse a URL (an export is a local file or folder: os paths, renames) and an output that is the
    store, a folder holding it (replacing it would delete the store) or a path inside it."""
    if "://" in out:
        raise ExportFileError(f"{out} is a URL; an export is written to a local path (copy it there afterwards)")
    if not store.location.is_local:
        return
    root, target = os.path.realpath(store.location.path()), os.path.realpath(out)
    if root == target or root.startswith(target.rstrip(os.sep) + os.sep):
        raise ExportFileError(f"{out} is or holds the store {store.location.uri}; export somewhere else")
    if target.startswith(root + os.sep):  # a file among the store's own would be taken for part of it
        raise ExportFileError(f"{out} is inside the store {store.location.uri}; export somewhere else")


@contextmanager
def _replaced(out: str, force: bool, folder: bool = False) -> Iterator[str]:
    """A temporary sibling of `out` (a file, or a `folder`) to write the export in, moved onto `out` once
    complete. An existing `out` is refused unless `force`; it is replaced only by a complete export, so
    an export that fails or is killed leaves it as it was. A `.partial` an export that was killed left
    is removed; so is a `.old` left between the two renames of a folder swap (or it is put back). A full
    disk is one line, once the partial export is removed."""
    parent, base = os.path.split(os.path.abspath(out))
    tmp, old = (os.path.join(parent, f".{base}.{suffix}") for suffix in ("partial", "old"))
    with disk_full_as_error(out, "the partial export was removed (an earlier one there is kept); free some space "
                                 "and export again"):
        try:
            _recover(out, old)
            if os.path.lexists(out) and not force:
                raise ExportFileError(f"{out} already exists; pass --force to replace it")
            _remove(tmp)
            os.makedirs(tmp if folder else parent, exist_ok=True)
            if not folder:
                open(tmp, "wb").close()
        except OSError as exc:
            if is_disk_full(exc):
                raise
            raise ExportFileError(f"cannot write {out}: {exc.strerror or exc}") from None
        try:
            yield tmp
            _swap(tmp, out, old)
        finally:
            _remove(tmp)


def _recover(out: str, old: str) -> None:
    """Finish a swap that was killed between its renames: `old` is the previous export."""
    if not os.path.lexists(old):
        return
    if os.path.lexists(out):
        _remove(old)
    else:
        os.replace(old, out)


def _swap(tmp: str, out: str, old: str) -> None:
    """A file onto a file (or nothing) in one atomic rename; a folder, or onto one, in two (`_recover`)."""
    try:
        if not os.path.lexists(out) or (os.path.isfile(tmp) and not os.path.isdir(out)):
            os.replace(tmp, out)
            return
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    except OSError as exc:
        raise ExportFileError(f"cannot replace {out}: {exc.strerror or exc}") from None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# -- clip-retrieval ----------------------------------------------------------------------------------

# kind: (its collection's folder, the embeddings' subfolder as `clip inference` names it)
CLIP_COLLECTIONS: dict[Kind, tuple[str, str]] = {"images": ("images", "img_emb"), "texts": ("texts", "text_emb")}
SOURCE_FIELDS = ("url", "key")  # item columns img2dataset fills, kept where the dataset has them


def export_clip_retrieval(store: Store, dataset: str, space_key: str | None, out_dir: str,
                          force: bool = False) -> ExportSummary:
    """Two collections in clip-retrieval's layout: OUT/images (img_emb/img_emb_{i}.npy and
    metadata/metadata_{i}.parquet, one row per unique image of the items) and OUT/texts (text_emb/ and
    metadata/, one row per unique caption). Each is what `clip inference` writes for one modality, so
    `clip index` and autofaiss take it as it is, and its metadata rows line up with its embeddings (clip
    back keeps one metadata table per index folder). Content without a row in the space is left out."""
    _check_out(store, out_dir)
    with _replaced(out_dir, force, folder=True) as tmp:
        data = store.dataset(dataset)
        space = store.space_or_only(space_key)
        unique = {kind: _unique_items(data.items, column) for kind, column in (("images", "image"),
                                                                                  ("texts", "caption"))}
        present = {kind: _present_rows(space, kind, table) for kind, table in unique.items()}
        _require_some(space, dataset, sum(len(rows) for _, rows in present.values()))
        for kind, (table, rows) in present.items():
            folder, sub = CLIP_COLLECTIONS[kind]
            metadata = _clip_metadata(data, kind, table)
            _write_partitions(os.path.join(tmp, folder), sub, space, f"{kind[:-1]}_global", rows, metadata)
    counts = {kind: len(rows) for kind, (_, rows) in present.items()}
    return ExportSummary(dataset, space.key, out_dir, "clip-retrieval", counts,
                         {kind: unique[kind].num_rows - counts[kind] for kind in KINDS})


def _unique_items(items: pa.Table, column: str) -> pa.Table:
    """Each distinct non-null hash of `column`, in the items' order: `hash`, `first` (the position of the
    first item that has it, whose fields describe it) and `item_ids` (every item that has it)."""
    indexed = items.select(["item_id", column]).append_column("position", pa.array(np.arange(items.num_rows)))
    grouped = indexed.filter(pc.is_valid(indexed[column])).group_by(column, use_threads=False).aggregate(
        [("position", "min"), ("item_id", "list")])
    return grouped.rename_columns({column: "hash", "position_min": "first", "item_id_list": "item_ids"})


def _present_rows(space: SpaceEmbeddings, kind: Kind, unique: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The hashes the space holds rows for, and their rows, in row order (see `_present`)."""
    rows = space.rows(kind, unique["hash"].to_pylist())
    order = _found_in_order(rows)
    return unique.take(pa.array(order, pa.int64())), rows[order]


def _clip_metadata(data: DatasetTables, kind: Kind, unique: pa.Table) -> pa.Table:
    """clip-retrieval's `image_path` and `caption` for each row, img2dataset's `url` and `key` where the
    items have them, and the hash and items each row comes from. An image's caption, url and key are
    its first item's; so are a caption's image, url and key."""
    first = data.items.take(unique["first"])
    images = first["image"] if kind == "texts" else unique["hash"]
    captions = first["caption"] if kind == "images" else unique["hash"]
    columns = {
        "image_path": _local_paths(_lookup(data.images, "uri", images)),
        "caption": _lookup(data.texts, "text", captions),
        **_source_fields(first),
        f"{'image' if kind == 'images' else 'caption'}_hash": unique["hash"],
        "item_ids": unique["item_ids"],
    }
    return pa.table(columns)


def _source_fields(items: pa.Table) -> dict[str, pa.ChunkedArray]:
    """The SOURCE_FIELDS columns the items have and fill (read by name: only some readers write them)."""
    return {name: items[name] for name in SOURCE_FIELDS
            if name in items.column_names and items[name].null_count < items.num_rows}


def _lookup(table: pa.Table, column: str, hashes: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """`table[column]` of each hash (null where the hash is)."""
    return table[column].take(pc.index_in(hashes, value_set=table["hash"]))


def _local_paths(uris: pa.ChunkedArray) -> pa.ChunkedArray:
    """A plain file by its path (`file://` dropped); any other URI (tar://, table://, s3://) as it is."""
    local = pc.starts_with(uris, "file://")
    return pc.if_else(local, pc.utf8_slice_codeunits(uris, len("file://")), uris)


def _write_partitions(root: str, sub: str, space: SpaceEmbeddings, name: str, rows: np.ndarray,
                      metadata: pa.Table) -> None:
    """`rows` of array `name` as `root/sub/sub_{i}.npy` and their metadata as
    `root/metadata/metadata_{i}.parquet`, a block of rows per partition (BLOCK_BYTES at most); `i` is
    zero-padded as clip inference pads it, so the partitions sort in row order."""
    row_bytes = space.spec.dims["embed_dim"] * np.dtype(space.spec.dtype).itemsize
    width = len(str(-(-len(rows) // _block_rows(row_bytes))))
    for folder in (sub, "metadata"):
        os.makedirs(os.path.join(root, folder))
    for i, (start, stop) in enumerate(_blocks(len(rows), row_bytes)):
        part = str(i).zfill(width)
        np.save(os.path.join(root, sub, f"{sub}_{part}.npy"), space.read(name, rows[start:stop]))
        pq.write_table(metadata.slice(start, stop - start), os.path.join(root, "metadata", f"metadata_{part}.parquet"))


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
        try:
            block = dataset[first:int(wanted[stop - 1]) + 1]
        except OSError as exc:  # a chunk whose bytes no longer decompress: the file is damaged, said once
            raise ExportFileError(f"{dataset.file.filename}: {dataset.name} rows {first} to {int(wanted[stop - 1])} "
                                  f"cannot be read ({exc}); the file is damaged, export it again") from None
        out[order[start:stop]] = block[wanted[start:stop] - first]
        start = stop
    return out
