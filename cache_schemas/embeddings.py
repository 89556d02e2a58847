"""One embedding space's data: its Zarr arrays, the plans that assign rows to content, and the
commit records (parts) that make encoded shards visible. Readers see only committed rows."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer.cpu import NDBuffer

from . import tables
from .errors import DamagedStoreError, InvalidSpecError
from .layout import (
    EMBEDDINGS,
    KINDS,
    SPACE_SPEC,
    ArrayLayout,
    Geometry,
    Kind,
    array_layouts,
    index_path,
    part_path,
    plan_path,
    space_dir,
)
from .location import Location
from .space import EmbeddingSpace

PART_SCHEMAS = {"images": tables.IMAGE_PART, "texts": tables.TEXT_PART}
# What one zarr call of a read may decode, as a share of the bytes the read returns (at least one
# chunk): a read's transient memory stays a small part of its result.
BLOCK_SHARE = 1 / 32
# The check takes a read's rows in sixteenths (its temporaries stay a small part of the read), but
# never in steps under CHECK_STEP_BYTES (each numpy call has a fixed cost that small reads feel).
CHECK_STEPS, CHECK_STEP_BYTES = 16, 1 << 17
CHECK_AT_MOST = 64  # uncovered planned shards checked one by one; more, and the parts folder is listed
VIEW_SCHEMAS = {"images": tables.IMAGES, "texts": tables.TEXTS}
ERROR_STAGE = {"images": "decode", "texts": "tokenize"}
# zstd at its fastest level: float16 embeddings shrink little, so a higher level only costs time.
COMPRESSORS = (ZstdCodec(level=1),)


# Per float dtype: the unsigned view, the mask of every bit but the sign, and the bits of infinity.
_FLOAT_BITS = {np.dtype(np.float16): (np.uint16, 0x7FFF, 0x7C00),
               np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000)}


def _zero_or_non_finite_rows(data: np.ndarray) -> np.ndarray:
    """Rows that are all (signed) zeros or hold an inf or NaN, read from the bits: the largest magnitude
    of a row is 0, or at least infinity's. Several times faster than numpy's float16 reductions."""
    unsigned, magnitude, infinity = _FLOAT_BITS[data.dtype]
    flat = np.ascontiguousarray(data).reshape(len(data), -1).view(unsigned)
    largest = np.empty(len(flat), unsigned)
    step = max(1, -(-len(flat) // CHECK_STEPS), CHECK_STEP_BYTES // max(1, flat[:1].nbytes))
    for i in range(0, len(flat), step):
        largest[i:i + step] = (flat[i:i + step] & unsigned(magnitude)).max(axis=1)
    return (largest == 0) | (largest >= infinity)


def checksum(block: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(block).tobytes()).hexdigest()


class SpaceEmbeddings:
    def __init__(self, location: Location, spec: EmbeddingSpace, geometry: Geometry, writable: bool):
        self.location = location
        self.spec = spec
        self.key = spec.key
        self.geometry = geometry
        self.writable = writable
        self.layouts: dict[str, ArrayLayout] = {a.name: a for a in array_layouts(spec)}
        self._read_shards: dict[Kind, tuple[set[int], list[int]]] = {}  # a reader's snapshot, as _parts is
        self._opened: dict[str, zarr.Array] = {}  # a reader's arrays: opening one reads its metadata (~1 ms)

    def __repr__(self) -> str:
        return f"SpaceEmbeddings({self.key!r})"

    @classmethod
    def open(cls, location: Location, key: str, writable: bool) -> SpaceEmbeddings:
        doc = location.read_json(f"{space_dir(key)}/{SPACE_SPEC}")
        spec = EmbeddingSpace.from_json(doc["spec"])
        if spec.key != key:
            raise InvalidSpecError(f"space folder {key} holds the spec of {spec.key}")
        return cls(location, spec, Geometry(**doc["geometry"]), writable)

    @classmethod
    def create(cls, location: Location, spec: EmbeddingSpace, geometry: Geometry) -> SpaceEmbeddings:
        """Create empty arrays, then the spec file: a space is listed only once it is complete."""
        space = cls(location, spec, geometry, writable=True)
        root = zarr.open_group(location.zarr_store(space._rel(EMBEDDINGS), read_only=False), mode="w",
                               attributes={"vlcache": {"space": spec.to_json(), "geometry": asdict(geometry)}})
        for array in space.layouts.values():
            chunks, shards = array.chunks(spec, geometry)
            root.create_array(array.name, shape=(0, *array.row_shape), chunks=chunks, shards=shards,
                              dtype=spec.dtype, compressors=COMPRESSORS, fill_value=0,
                              dimension_names=array.dims, attributes={"description": array.description})
        location.write_json(space._rel(SPACE_SPEC), {"spec": spec.to_json(), "geometry": asdict(geometry)})
        return space

    def _rel(self, name: str) -> str:
        return f"{space_dir(self.key)}/{name}"

    # -- arrays ---------------------------------------------------------------------------------

    @cached_property
    def group(self) -> zarr.Group:
        store = self.location.zarr_store(self._rel(EMBEDDINGS), read_only=not self.writable)
        return zarr.open_group(store, mode="r+" if self.writable else "r")

    def array(self, name: str) -> zarr.Array:
        if name not in self.layouts:
            raise KeyError(f"space {self.key} stores no {name!r}; it stores {sorted(self.layouts)}")
        if self.writable:  # a writer grows arrays: their shape is read afresh
            return self.group[name]
        if name not in self._opened:
            self._opened[name] = self.group[name]
        return self._opened[name]

    def arrays(self, kind: Kind) -> list[str]:
        return [a.name for a in self.layouts.values() if a.kind == kind]

    def grow(self, kind: Kind, n_shards: int) -> None:
        """Make every array of `kind` long enough for shards [0, n_shards). Only the driver calls this:
        workers write data inside the shape, never metadata."""
        for name in self.arrays(kind):
            rows = self.layouts[name].rows_for_shards(self.spec, self.geometry, n_shards)
            array = self.array(name)
            if array.shape[0] < rows:
                array.resize((rows, *array.shape[1:]))

    def token_base(self, shard: int) -> int:
        """First text_tokens row owned by a text shard."""
        return shard * self.geometry.rows_per_shard * self.spec.context_length

    # -- plans and commits ----------------------------------------------------------------------

    def plan(self, kind: Kind) -> pa.Table:
        """Every row ever assigned for `kind`, committed or not."""
        names = [n for n in self.location.listdir(self._rel("plans")) if n.startswith(f"{kind}-")]
        parts = [self.location.read_parquet(self._rel(f"plans/{n}")) for n in names]
        schema = pa.schema([f for f in PART_SCHEMAS[kind] if f.name != "error"])
        return pa.concat_tables([tables.conform(p, schema, "plan") for p in parts]) if parts else schema.empty_table()

    def write_plan(self, kind: Kind, plan: pa.Table) -> None:
        """Claim the plan's shards. Exclusive: a concurrent extraction claiming them too fails."""
        first_shard = self.geometry.shard_of(int(pc.min(plan["row"]).as_py()))
        self.location.write_parquet(plan_path(self.key, kind, first_shard), plan, exclusive=True)

    def committed_shards(self, kind: Kind) -> list[int]:
        """Shards with a commit record (a part file)."""
        return self._shards(kind)[1]

    def pending_shards(self, kind: Kind) -> list[int]:
        """Planned shards without a commit record: the next extraction encodes them."""
        planned, committed = self._shards(kind)
        return sorted(planned - set(committed))

    def listed_shards(self, kind: Kind) -> list[int]:
        """Shards whose part file exists, by listing the folder (what verify trusts)."""
        names = self.location.listdir(self._rel(f"parts/{kind}"))
        return sorted(int(n.split(".")[0]) for n in names if n.endswith(".parquet"))

    def _shards(self, kind: Kind) -> tuple[set[int], list[int]]:
        """(planned, committed). With an index, the committed shards are those it covers plus those of
        the few planned shards it does not cover whose part exists, so no listing of every commit ever
        made; without one, or while many shards are uncovered (an extraction under way), the listing.
        A reader works from one snapshot; a writer looks again each time."""
        if kind not in self._read_shards or self.writable:
            self._read_shards[kind] = self._find_shards(kind)
        return self._read_shards[kind]

    def _find_shards(self, kind: Kind) -> tuple[set[int], list[int]]:
        planned = set((self.plan(kind)["row"].to_numpy() // self.geometry.rows_per_shard).tolist())
        covered = self.indexed_shards(kind)
        uncovered = planned - covered if covered is not None else planned
        if covered is None or len(uncovered) > CHECK_AT_MOST:
            return planned, self.listed_shards(kind)
        found = {s for s in uncovered if self.location.exists(part_path(self.key, kind, s))}
        return planned, sorted(covered | found)

    def next_free_shard(self, plan: pa.Table) -> int:
        """The first shard after every row of `plan` (the kind's plans, read once by the caller)."""
        rows = plan["row"]
        return self.geometry.shard_of(int(pc.max(rows).as_py())) + 1 if len(rows) else 0

    def commit(self, kind: Kind, shard: int, part: pa.Table, checksums: dict[str, str],
               token_rows: tuple[int, int] | None = None) -> None:
        """Make a shard visible. Called after its arrays are written; the part file is the commit."""
        meta = {"shard": shard, "checksums": checksums, "committed": time.time()}
        if token_rows is not None:
            meta["token_rows"] = list(token_rows)
        part = tables.conform(part, PART_SCHEMAS[kind], f"{kind} part")
        part = part.replace_schema_metadata({"vlcache": json.dumps(meta)})
        self.location.write_parquet(part_path(self.key, kind, shard), part)

    def drop_shard(self, kind: Kind, shard: int) -> int:
        """Forget a committed shard whose content no dataset needs; return the bytes freed. The caller
        holds the space's lease. The order keeps a crash harmless: out of the index first; then without
        its part the shard is only pending (an extraction would encode it again); without its plan rows
        its number is free; its Zarr shards, deleted last, are at worst bytes nobody reads until the
        number is reused."""
        indexed, covered = self._index(kind)
        if shard in covered:  # first: a shard number reused later must never find these rows indexed
            keep = indexed["row"].to_numpy() // self.geometry.rows_per_shard != shard
            self._write_index(kind, indexed.filter(pa.array(keep)), covered - {shard})
        self.location.remove(part_path(self.key, kind, shard))
        for name in self.location.listdir(self._rel("plans")):
            if not name.startswith(f"{kind}-"):
                continue
            plan = self.location.read_parquet(self._rel(f"plans/{name}"))
            keep = plan["row"].to_numpy() // self.geometry.rows_per_shard != shard
            if keep.all():
                continue
            if keep.any():
                self.location.write_parquet(self._rel(f"plans/{name}"), plan.filter(pa.array(keep)))
            else:
                self.location.remove(self._rel(f"plans/{name}"))
        freed = 0
        for name in self.arrays(kind):
            rel = self._rel(f"{EMBEDDINGS}/{name}/c/{shard}" + "/0" * len(self.layouts[name].row_shape))
            if self.location.exists(rel):
                freed += self.location.fs.size(self.location.path(rel))
                self.location.remove(rel)
        self.__dict__.pop("_parts", None)  # cached views are stale now
        return freed

    def part(self, kind: Kind, shard: int) -> tuple[pa.Table, dict]:
        table = self.location.read_parquet(part_path(self.key, kind, shard))
        meta = json.loads(table.schema.metadata[b"vlcache"])
        return tables.conform(table, PART_SCHEMAS[kind], f"{kind} part {shard}"), meta

    @cached_property
    def _parts(self) -> dict[Kind, pa.Table]:
        """Every committed row, error or not: the index for the shards it covers, part files for the rest."""
        out = {}
        for kind in KINDS:
            committed = self.committed_shards(kind)
            indexed, covered = self._index(kind)
            shards = indexed["row"].to_numpy() // self.geometry.rows_per_shard
            live = indexed.filter(pa.array(np.isin(shards, committed)))  # a collected shard's rows are gone
            fresh = [self.part(kind, s)[0] for s in committed if s not in covered]
            out[kind] = pa.concat_tables([live, *fresh])
        return out

    # -- the index: committed rows in one file per kind, so opening a space costs the same after
    # -- ten commits or ten thousand

    def indexed_shards(self, kind: Kind) -> set[int] | None:
        """The shards the index covers (from its footer alone), or None without an index."""
        if not self.location.exists(index_path(self.key, kind)):
            return None
        return set(json.loads(self.location.read_parquet_schema(index_path(self.key, kind)).metadata[b"vlcache"])
                   ["shards"])

    def _index(self, kind: Kind) -> tuple[pa.Table, set[int]]:
        """The index's rows and the shards it covers (none if the space was never compacted)."""
        if not self.location.exists(index_path(self.key, kind)):
            return PART_SCHEMAS[kind].empty_table(), set()
        table = self.location.read_parquet(index_path(self.key, kind))
        covered = set(json.loads(table.schema.metadata[b"vlcache"])["shards"])
        return tables.conform(table, PART_SCHEMAS[kind], f"{kind} index"), covered

    def compact(self) -> None:
        """Write each kind's index from the committed parts. The caller holds the space's lease."""
        self.__dict__.pop("_parts", None)
        for kind in KINDS:
            self._write_index(kind, self._parts[kind], self.committed_shards(kind))

    def _write_index(self, kind: Kind, rows: pa.Table, shards: Iterable[int]) -> None:
        meta = {"shards": sorted(shards), "compacted": time.time()}
        self.location.write_parquet(index_path(self.key, kind),
                                    rows.replace_schema_metadata({"vlcache": json.dumps(meta)}))

    # -- the read API's tables ------------------------------------------------------------------

    def images(self) -> pa.Table:
        """Committed, successfully encoded images: hash, uri, width, height, row."""
        return self.view("images")

    def texts(self) -> pa.Table:
        """Committed texts: hash, text, n_tokens, offset (into text_tokens), row."""
        return self.view("texts")

    def committed_rows(self, kind: Kind) -> pa.Table:
        """Every committed row of `kind`, failed ones included (their `error` set)."""
        return self._parts[kind]

    def view(self, kind: Kind) -> pa.Table:
        part = self._parts[kind]
        return part.filter(pc.is_null(part["error"])).select(VIEW_SCHEMAS[kind].names)

    def errors(self) -> pa.Table:
        rows = []
        for kind, source in (("images", "uri"), ("texts", "text")):
            failed = self._parts[kind].filter(pc.is_valid(self._parts[kind]["error"]))
            rows += [{"source": s, "stage": ERROR_STAGE[kind], "message": m}
                     for s, m in zip(failed[source].to_pylist(), failed["error"].to_pylist())]
        return pa.Table.from_pylist(rows, schema=tables.ERRORS)

    def failed_hashes(self, kind: Kind) -> set[str]:
        part = self._parts[kind]
        return set(part.filter(pc.is_valid(part["error"]))["hash"].to_pylist())

    # -- fetching tensors -----------------------------------------------------------------------

    @cached_property
    def _row_index(self) -> dict[Kind, dict[str, int]]:
        return {kind: dict(zip(self.view(kind)["hash"].to_pylist(), self.view(kind)["row"].to_pylist()))
                for kind in ("images", "texts")}

    def rows(self, kind: Kind, hashes: Iterable[str | None]) -> np.ndarray:
        """Rows of the given content hashes; -1 where the space lacks one (not encoded, or failed)."""
        index = self._row_index[kind]
        return np.fromiter((index.get(h, -1) if h else -1 for h in hashes), dtype=np.int64)

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of an image or text-global array, in the order asked: (len(rows), *row_shape)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and rows.min() < 0:
            raise IndexError(f"row -1 asked of {name}: some content is not in space {self.key}")
        if self.layouts[name].ragged:
            raise ValueError(f"{name} is ragged: use read_tokens")
        if not rows.size:
            return np.empty((0, *self.layouts[name].row_shape), self.spec.dtype)
        return self._in_order(name, rows, self._read_rows)

    def token_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Per text row: the first text_tokens row of its tokens, and their count (0 for absent rows)."""
        return self._token_index

    @cached_property
    def _token_index(self) -> tuple[np.ndarray, np.ndarray]:
        texts = self.view("texts")
        size = int(pc.max(texts["row"]).as_py()) + 1 if texts.num_rows else 0
        offsets, lengths = np.zeros(size, np.int64), np.zeros(size, np.int64)
        offsets[texts["row"].to_numpy()] = texts["offset"].to_numpy()
        lengths[texts["row"].to_numpy()] = texts["n_tokens"].to_numpy()
        return offsets, lengths

    def read_tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Text tokens of `rows`, concatenated: (sum of lengths, D), and each text's length."""
        rows = np.asarray(rows, dtype=np.int64)
        offsets, lengths = self._token_index
        if rows.size and (rows.min() < 0 or rows.max() >= len(offsets)):
            raise IndexError(f"text rows out of range for space {self.key}")
        take = lengths[rows]
        if not take.sum():
            return np.empty((0, self.spec.text_token_dim), self.spec.dtype), take
        index = np.concatenate([np.arange(o, o + n) for o, n in zip(offsets[rows], take)])
        return self._in_order("text_tokens", index, self._read_rows), take

    def _in_order(self, name: str, rows: np.ndarray, read) -> np.ndarray:
        """`read` (sorted unique rows -> their data), checked, in the order `rows` asks. Rows already
        sorted and unique (a loader's window) are returned as read, without a second copy."""
        if bool(np.all(np.diff(rows) > 0)):
            return self._checked(name, rows, read(name, rows))
        unique, inverse = np.unique(rows, return_inverse=True)  # zarr reads each chunk once, in order
        return self._checked(name, unique, read(name, unique))[inverse]

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Sorted unique `rows` of an array. Each run of consecutive chunks they touch is read as one
        slice (zarr's orthogonal indexing walks its index one coordinate at a time, which made the
        loader several times slower than the disk), at most BLOCK_SHARE of the result's bytes per call.
        Consecutive rows decode straight into the result; others go through their block."""
        array = self.array(name)
        chunk = array.chunks[0]
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        chunks_per_call = max(1, int(out.nbytes * BLOCK_SHARE) // max(1, chunk * out[:1].nbytes))
        first = rows // chunk
        cut = (np.diff(first) > 1) | (np.diff(first // chunks_per_call) > 0)
        bounds = [0, *(np.flatnonzero(cut) + 1).tolist(), len(rows)]
        try:
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                self._read_run(array, rows[lo:hi], out[lo:hi])
            return out
        except (RuntimeError, ValueError, OSError) as exc:  # what codecs raise for damaged bytes
            raise DamagedStoreError(f"space {self.key}, array {name}, shard {self._shard(name, int(rows[0]))} and "
                                    f"after: a chunk cannot be decoded ({type(exc).__name__}); run vlcache cache "
                                    f"verify {self.location.uri}") from None

    @staticmethod
    def _read_run(array: zarr.Array, rows: np.ndarray, out: np.ndarray) -> None:
        first, last = int(rows[0]), int(rows[-1])
        if last - first + 1 == len(rows):
            array.get_basic_selection(slice(first, last + 1), out=NDBuffer.from_numpy_array(out))
            return
        chunk = array.chunks[0]
        start = first - first % chunk
        block = array[start:min(last - last % chunk + chunk, array.shape[0])]
        np.take(block, rows - start, axis=0, out=out)

    def _checked(self, name: str, rows: np.ndarray, data: np.ndarray) -> np.ndarray:
        """Committed rows are never all zeros (a deleted chunk reads back as its fill value) and never
        non-finite (flipped bytes that still decode): either means damage, never a number to report."""
        bad = _zero_or_non_finite_rows(data)
        if bad.any():
            row = int(rows[np.argmax(bad)])
            raise DamagedStoreError(f"space {self.key}, array {name}, shard {self._shard(name, row)}: committed rows "
                                    f"read back as zeros or non-finite numbers (a missing or damaged chunk); run "
                                    f"vlcache cache verify {self.location.uri}")
        return data

    def _shard(self, name: str, row: int) -> int:
        per_shard = self.geometry.rows_per_shard * (self.spec.context_length if name == "text_tokens" else 1)
        return row // per_shard

    def read_tokens_padded(self, rows: np.ndarray, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Text tokens padded to `length` (default: the longest): (n, L, D) and a boolean mask (n, L)."""
        flat, lengths = self.read_tokens(rows)
        length = int(lengths.max(initial=0)) if length is None else length
        out = np.zeros((len(lengths), length, flat.shape[1]), dtype=flat.dtype)
        mask = np.arange(length)[None, :] < np.minimum(lengths, length)[:, None]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for i, (start, n) in enumerate(zip(starts, np.minimum(lengths, length))):
            out[i, :n] = flat[start:start + n]
        return out, mask

    def nbytes_stored(self) -> dict[str, int]:
        """Bytes on disk per array: lists every chunk file, so it grows with the store's history."""
        return {name: int(self.array(name).nbytes_stored()) for name in self.layouts}

    def nbytes_committed(self) -> dict[str, int]:
        """Uncompressed bytes of the committed rows per array, from the rows alone (no listing)."""
        itemsize = np.dtype(self.spec.dtype).itemsize
        rows = {kind: self._parts[kind].num_rows for kind in KINDS}
        tokens = int(pc.sum(self._parts["texts"]["n_tokens"]).as_py() or 0)
        return {name: (tokens if layout.ragged else rows[layout.kind]) * int(np.prod(layout.row_shape)) * itemsize
                for name, layout in self.layouts.items()}
