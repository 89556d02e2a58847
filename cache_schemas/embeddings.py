"""One embedding space, read: its Zarr arrays (each opened once), its committed rows (through its
ledger, a snapshot taken when the space is opened) and checked tensor reads. Readers see only
committed rows; `writer.SpaceWriter` is the same space open for writing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr
from zarr.core.buffer.cpu import NDBuffer

from . import tables
from .errors import DamagedStoreError
from .layout import EMBEDDINGS, KINDS, SPACE_SPEC, ArrayLayout, Geometry, Kind, array_layouts, space_dir, token_rows
from .ledger import Ledger
from .location import Location
from .space import EmbeddingSpace

# What one zarr call of a read may decode, as a share of the bytes the read returns (at least one
# chunk): a read's transient memory stays a small part of its result.
BLOCK_SHARE = 1 / 32
# The check takes a read's rows in sixteenths (its temporaries stay a small part of the read), but
# never in steps under CHECK_STEP_BYTES (each numpy call has a fixed cost that small reads feel).
CHECK_STEPS, CHECK_STEP_BYTES = 16, 1 << 17
VIEW_SCHEMAS = {"images": tables.IMAGES, "texts": tables.TEXTS}
ERROR_STAGE = {"images": "decode", "texts": "tokenize"}


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
    def __init__(self, location: Location, spec: EmbeddingSpace, geometry: Geometry):
        self.location = location
        self.spec = spec
        self.key = spec.key
        self.geometry = geometry
        self.layouts: dict[str, ArrayLayout] = {a.name: a for a in array_layouts(spec)}
        self.ledger = Ledger(location, spec.key, geometry)
        self._opened: dict[str, zarr.Array] = {}  # opening an array reads its metadata (~1 ms)
        self._asked: dict[Kind, pa.Array] = {}  # hashes looked up so far, found or not
        self._found: dict[Kind, pa.Table] = {}  # their committed, encoded rows (the view's columns)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"

    @classmethod
    def open(cls, location: Location, key: str):
        rel = f"{space_dir(key)}/{SPACE_SPEC}"
        doc = location.read_json(rel, keys=("spec", "geometry"))
        return cls(location, *parse_space(location, rel, key, doc["spec"], doc["geometry"]))

    def _rel(self, name: str) -> str:
        return f"{space_dir(self.key)}/{name}"

    # -- arrays ---------------------------------------------------------------------------------

    @cached_property
    def group(self) -> zarr.Group:
        return zarr.open_group(self.location.zarr_store(self._rel(EMBEDDINGS), read_only=True), mode="r")

    def array(self, name: str) -> zarr.Array:
        if name not in self.layouts:
            raise KeyError(f"space {self.key} stores no {name!r}; it stores {sorted(self.layouts)}")
        if name not in self._opened:
            self._opened[name] = self.group[name]
        return self._opened[name]

    def arrays(self, kind: Kind) -> list[str]:
        return [a.name for a in self.layouts.values() if a.kind == kind]

    def token_base(self, shard: int) -> int:
        """First text_tokens row owned by a text shard."""
        return self.geometry.token_base(shard, self.spec.context_length)

    # -- what the ledger knows ------------------------------------------------------------------

    def committed_shards(self, kind: Kind) -> list[int]:
        """Shards with a commit record (a part file)."""
        return self.ledger.committed_shards(kind)

    def pending_shards(self, kind: Kind) -> list[int]:
        """Planned shards without a commit record: the next extraction encodes them."""
        return self.ledger.pending_shards(kind)

    def listed_shards(self, kind: Kind) -> list[int]:
        return self.ledger.listed_shards(kind)

    def indexed_shards(self, kind: Kind) -> set[int] | None:
        return self.ledger.indexed_shards(kind)

    def part(self, kind: Kind, shard: int) -> tuple[pa.Table, dict]:
        return self.ledger.part(kind, shard)

    # -- the read API's tables ------------------------------------------------------------------

    def images(self) -> pa.Table:
        """Committed, successfully encoded images: hash, uri, width, height, row."""
        return self.view("images")

    def texts(self) -> pa.Table:
        """Committed texts: hash, text, n_tokens, offset (into text_tokens), row."""
        return self.view("texts")

    def committed_rows(self, kind: Kind) -> pa.Table:
        """Every committed row of `kind`, failed ones included (their `error` set): the whole space."""
        return self.ledger.committed_rows(kind)

    def view(self, kind: Kind) -> pa.Table:
        """The committed, encoded rows of `kind`: the whole space (a dataset's part: `lookup`)."""
        part = self.committed_rows(kind)
        return part.filter(pc.is_null(part["error"])).select(VIEW_SCHEMAS[kind].names)

    def lookup(self, kind: Kind, hashes: Iterable[str | None] | pa.Array | pa.ChunkedArray) -> pa.Table:
        """The committed, encoded rows of these hashes (the view's columns), read from the ledger once per
        hash: what a dataset costs to look up is the dataset, whatever the space's size."""
        wanted = pc.unique(_hash_array(hashes).drop_null())
        asked = self._asked.get(kind, pa.array([], tables.HASH))
        new = wanted.filter(pc.invert(pc.is_in(wanted, value_set=asked)))
        if len(new):
            found = self.ledger.lookup(kind, new)
            found = found.filter(pc.is_null(found["error"])).select(VIEW_SCHEMAS[kind].names)
            self._asked[kind] = pa.concat_arrays([asked, new])
            self._found[kind] = pa.concat_tables([self._found.get(kind, VIEW_SCHEMAS[kind].empty_table()), found])
            self.__dict__.pop("_spans", None)
        found = self._found.get(kind, VIEW_SCHEMAS[kind].empty_table())
        return found.filter(pc.is_in(found["hash"], value_set=wanted))

    def errors(self) -> pa.Table:
        rows = []
        for kind, source in (("images", "uri"), ("texts", "text")):
            for batch in self.ledger.row_batches(kind, [source, "error"]):
                failed = batch.filter(pc.is_valid(batch["error"]))
                rows += [{"source": s, "stage": ERROR_STAGE[kind], "message": m}
                         for s, m in zip(failed[source].to_pylist(), failed["error"].to_pylist())]
        return pa.Table.from_pylist(rows, schema=tables.ERRORS)

    # -- fetching tensors -----------------------------------------------------------------------

    def rows(self, kind: Kind, hashes: Iterable[str | None] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Rows of the given content hashes; -1 where the space lacks one (not encoded, or failed)."""
        wanted = _hash_array(hashes)
        found = self.lookup(kind, wanted)
        index = pc.index_in(wanted, value_set=found["hash"])
        rows = found["row"].to_numpy()
        positions = index.fill_null(-1).to_numpy(zero_copy_only=False)
        return np.where(positions >= 0, rows[np.maximum(positions, 0)] if len(rows) else -1, -1).astype(np.int64)

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

    def token_spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per text row: the first text_tokens row of its tokens, and their count. Rows this reader has
        not looked up by hash are looked up by row."""
        rows = np.asarray(rows, dtype=np.int64)
        where, hit = self._span_positions(rows)
        if not hit.all():
            missing = np.unique(rows[~hit])
            found = self.ledger.lookup("texts", missing, column="row")
            found = found.filter(pc.is_null(found["error"])).select(VIEW_SCHEMAS["texts"].names)
            if found.num_rows < len(missing):
                raise IndexError(f"text rows out of range for space {self.key}")
            have = self._found.get("texts", VIEW_SCHEMAS["texts"].empty_table())
            self._found["texts"] = pa.concat_tables([have, found.filter(pc.invert(pc.is_in(found["row"],
                                                                                             value_set=have["row"])))])
            self.__dict__.pop("_spans", None)
            where, hit = self._span_positions(rows)
        _, offsets, lengths = self._spans
        return offsets[where], lengths[where]

    def _span_positions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = self._spans[0]
        if not len(known):
            return np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
        where = np.minimum(np.searchsorted(known, rows), len(known) - 1)
        return where, known[where] == rows

    @cached_property
    def _spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The looked-up texts' (rows, offsets, counts), sorted by row."""
        texts = self._found.get("texts", VIEW_SCHEMAS["texts"].empty_table()).sort_by("row")
        return (texts["row"].to_numpy(), texts["offset"].to_numpy().astype(np.int64),
                texts["n_tokens"].to_numpy().astype(np.int64))

    def read_tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Text tokens of `rows`, concatenated: (sum of lengths, D), and each text's length."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and rows.min() < 0:
            raise IndexError(f"text rows out of range for space {self.key}")
        offsets, take = self.token_spans(rows)
        if not take.sum():
            return np.empty((0, self.spec.text_token_dim), self.spec.dtype), take
        return self._in_order("text_tokens", token_rows(offsets, take), self._read_rows), take

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
        """Uncompressed bytes of the committed rows per array, counted a batch at a time."""
        rows = {kind: sum(b.num_rows for b in self.ledger.row_batches(kind, ["row"])) for kind in KINDS}
        tokens = sum(int(pc.sum(b["n_tokens"]).as_py() or 0) for b in self.ledger.row_batches("texts", ["n_tokens"]))
        return self.nbytes_of(rows, tokens)

    def nbytes_of(self, rows: dict[Kind, int], tokens: int) -> dict[str, int]:
        """Uncompressed bytes per array of so many rows of each kind, and text tokens."""
        itemsize = np.dtype(self.spec.dtype).itemsize
        return {name: (tokens if layout.ragged else rows[layout.kind]) * int(np.prod(layout.row_shape)) * itemsize
                for name, layout in self.layouts.items()}


def parse_space(location: Location, rel: str, key: str, spec: Any, geometry: Any) -> tuple[EmbeddingSpace, Geometry]:
    """A space's spec and geometry as file `rel` holds them (its `space.json`, or the copy in its Zarr group's
    attributes), checked against the space's key."""
    with location.parsing(rel, "a space spec"):
        parsed = EmbeddingSpace.from_json(spec), Geometry(**geometry)
    if parsed[0].key != key:
        raise location.damaged(rel, f"holds the spec of space {parsed[0].key}, not of {key}")
    return parsed


def _hash_array(hashes: Iterable[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(hashes, pa.ChunkedArray):
        return hashes.combine_chunks().cast(tables.HASH)
    if isinstance(hashes, pa.Array):
        return hashes.cast(tables.HASH)
    return pa.array(list(hashes), tables.HASH)
