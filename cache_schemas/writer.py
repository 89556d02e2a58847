"""One embedding space open for writing. The driver, holding the space's lease, creates it, grows its
arrays, writes plans and compacts the index; workers write a shard's arrays whole and commit it.
The ledger it reads once is kept up to date as it writes, so one extraction reads each file once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from . import tables
from .embeddings import SpaceEmbeddings
from .errors import DamagedMetadataError
from .layout import (
    EMBEDDINGS,
    KINDS,
    SPACE_SPEC,
    Geometry,
    Kind,
    index_manifest,
    index_segment,
    part_path,
    plan_path,
)
from .ledger import PART_SCHEMAS, PLAN_SCHEMAS, SCAN_BATCH, Segment, shard_ranges
from .location import Location
from .space import EmbeddingSpace
from .version import SCHEMA_VERSION

# zstd at its fastest level: float16 embeddings shrink little, so a higher level only costs time. Then a
# crc32c of each compressed chunk (since schema 1.5), which zarr checks as it decodes the chunk: a flipped
# byte that still decodes (most do) is an error at the read, not a wrong number. It costs about 0.1% of
# an epoch's read (bench/crc32c_bench.py).
COMPRESSORS = (ZstdCodec(level=1), Crc32cCodec())
# A new index segment is merged with the one before it while it holds at least half as many rows: the
# index stays a few segments (about log2 of its rows), each row rewritten about as often. Segments
# past this size are left whole, so no merge rewrites a large store's index at once.
MERGE_ROWS_AT_MOST = 1 << 24


class SpaceWriter(SpaceEmbeddings):
    def __init__(self, location: Location, spec: EmbeddingSpace, geometry: Geometry):
        super().__init__(location, spec, geometry)
        self._retired: list[str] = []  # segments a merge replaced, removed once the manifest stops listing them
        self._unlisted: list[str] = []  # segments written since the last manifest, which lists them once written

    @classmethod
    def create(cls, location: Location, spec: EmbeddingSpace, geometry: Geometry) -> SpaceWriter:
        """Create empty arrays, then the spec file: a space is listed only once it is complete."""
        space = cls(location, spec, geometry)
        root = zarr.open_group(location.zarr_store(space._rel(EMBEDDINGS), read_only=False), mode="w",
                               attributes={"vlcache": {"space": spec.to_json(), "geometry": asdict(geometry)}})
        for array in space.layouts.values():
            chunks, shards = array.chunks(spec, geometry)
            root.create_array(array.name, shape=(0, *array.row_shape), chunks=chunks, shards=shards,
                              dtype=spec.dtype, compressors=COMPRESSORS, fill_value=0,
                              dimension_names=array.dims, attributes={"description": array.description})
        location.write_json(space._rel(SPACE_SPEC), {"spec": spec.to_json(), "geometry": asdict(geometry)})
        return space

    @property
    def group(self) -> zarr.Group:
        return zarr.open_group(self.location.zarr_store(self._rel(EMBEDDINGS), read_only=False), mode="r+")

    def array(self, name: str) -> zarr.Array:
        """Opened afresh each time: the driver grows arrays, so their shape must be read anew."""
        if name not in self.layouts:
            raise KeyError(f"space {self.key} stores no {name!r}; it stores {sorted(self.layouts)}")
        return self.group[name]

    def grow(self, kind: Kind, n_shards: int) -> None:
        """Make every array of `kind` long enough for shards [0, n_shards). Only the driver calls this:
        workers write data inside the shape, never metadata."""
        group = self.group
        for name in self.arrays(kind):
            rows = self.layouts[name].rows_for_shards(self.spec, self.geometry, n_shards)
            array = group[name]
            if array.shape[0] < rows:
                array.resize((rows, *array.shape[1:]))

    # -- what writes killed midway left ---------------------------------------------------------

    def remove_partials(self) -> list[str]:
        """Remove the `.partial` files writes killed midway left where this space's writers write (the caller
        holds the lease): its metadata folders (ours: space.json, plans, commit records, the index; zarr's: the
        group's and each array's zarr.json) and the chunk folders of the shards no segment covers yet (zarr's,
        beside the shard file a killed worker was writing: pending, or committed by a run that did not compact).
        Never a walk of the arrays, which hold a folder per shard: that is verify's and repair's."""
        if not self.location.is_local:  # an object store has none: a PUT is atomic
            return []
        folders = ["", "plans", "index", *(f"parts/{kind}" for kind in KINDS), EMBEDDINGS,
                   *(f"{EMBEDDINGS}/{name}" for name in self.layouts)]
        removed = [p for folder in folders for p in self.location.remove_partials(self._rel(folder), recursive=False)]
        for kind in KINDS:
            try:
                unindexed = self.pending_shards(kind) + self.ledger.uncovered_commits(kind)
            except DamagedMetadataError:  # a damaged plan or index: repair rebuilds it, and walks every folder
                continue
            removed += self._remove_shard_partials(kind, unindexed)
        return removed

    def _remove_shard_partials(self, kind: Kind, shards: list[int]) -> list[str]:
        """zarr's `.partial` files beside the shard files of `shards`, in every array of `kind`."""
        return [p for shard in shards for name in self.arrays(kind)
                for p in self.location.remove_partials(self._shard_file(name, shard).rsplit("/", 1)[0],
                                                       recursive=False)]

    def _shard_file(self, name: str, shard: int) -> str:
        """The file of array `name` holding vlcache shard `shard` (one Zarr shard)."""
        return self._rel(f"{EMBEDDINGS}/{name}/c/{shard}" + "/0" * len(self.layouts[name].row_shape))

    # -- plans and commits ----------------------------------------------------------------------

    def write_plan(self, kind: Kind, plan: pa.Table) -> None:
        """Claim the plan's shards. Exclusive: a concurrent extraction claiming them too fails."""
        plan = tables.conform(plan, PLAN_SCHEMAS[kind], "plan")
        rel = plan_path(self.key, kind, int(self.geometry.shard_of(int(pc.min(plan["row"]).as_py()))))
        self.location.write_parquet(rel, plan, exclusive=True, row_group_size=SCAN_BATCH)
        self.ledger.add_plan(kind, rel, plan)

    def pending_work(self, kind: Kind) -> list[tuple[int, pa.Table]]:
        """(shard, its planned rows sorted by row) for every planned shard without a commit record."""
        plan = self.ledger.pending_rows(kind)
        shards = self.geometry.shard_of(plan["row"].to_numpy())
        return [(s, plan.filter(pa.array(shards == s)).sort_by("row")) for s in self.ledger.pending_shards(kind)]

    def commit(self, kind: Kind, shard: int, part: pa.Table, checksums: dict[str, str],
               token_rows: tuple[int, int] | None = None) -> None:
        """Make a shard visible (a worker, after writing its arrays): the part file is the commit."""
        meta = {"shard": shard, "checksums": checksums, "committed": time.time()}
        if token_rows is not None:
            meta["token_rows"] = list(token_rows)
        part = tables.conform(part, PART_SCHEMAS[kind], f"{kind} part")
        part = part.replace_schema_metadata({"vlcache": json.dumps(meta)})
        self.location.write_parquet(part_path(self.key, kind, shard), part)

    def committed_by_workers(self, kind: Kind, shards: list[int]) -> None:
        """What the driver learns from its workers' results, so its ledger need not look again."""
        self.ledger.add_commits(kind, shards)

    # -- the index ------------------------------------------------------------------------------

    def compact(self) -> None:
        """Index the committed rows no segment covers yet, in a new segment per kind (only they are
        read), and merge the newest segments while they are of a size. The caller holds the lease."""
        with self._indexing():
            for kind in KINDS:
                fresh = self.ledger.uncovered_commits(kind)
                self._remove_shard_partials(kind, fresh)  # a worker lost mid-write left one; another wrote the shard
                segments = list(self.ledger.segments(kind))
                if fresh:
                    rows = pa.concat_tables([self.part(kind, s)[0] for s in fresh])
                    segments.append(self._write_segment(kind, [rows], frozenset(fresh)))
                while len(segments) > 1 and segments[-1].rows * 2 >= segments[-2].rows and \
                        segments[-1].rows + segments[-2].rows <= MERGE_ROWS_AT_MOST:
                    segments[-2:] = [self._merge(kind, segments[-2], segments[-1])]
                if fresh or not self.location.exists(index_manifest(self.key, kind)):
                    self._write_manifest(kind, segments)
        self._note_schema_version()

    def reindex(self, kind: Kind, shards: list[int]) -> None:
        """The index of `kind` rebuilt from these shards' commit records (`repair`, for a damaged index): new
        segments of up to MERGE_ROWS_AT_MOST rows, a manifest listing them, every older index file retired."""
        old = [self._rel(f"index/{n}") for n in self.location.listdir(self._rel("index"))
               if n.endswith(".parquet") and (n.startswith(f"{kind}-") or n == f"{kind}.parquet")]
        segments: list[Segment] = []
        parts: dict[int, pa.Table] = {}
        rows = 0
        with self._indexing():
            for shard in shards:
                parts[shard] = self.part(kind, shard)[0]
                rows += parts[shard].num_rows
                if rows >= MERGE_ROWS_AT_MOST or shard == shards[-1]:
                    segments.append(self._write_segment(kind, list(parts.values()), frozenset(parts)))
                    parts, rows = {}, 0
            self._retired.extend(old)
            self._write_manifest(kind, segments)

    def _write_segment(self, kind: Kind, parts: list[pa.Table], shards: frozenset[int]) -> Segment:
        number = self._next_segment(kind)
        rel = index_segment(self.key, kind, number)
        rows = pa.concat_tables([tables.conform(p, PART_SCHEMAS[kind], f"{kind} index") for p in parts])
        self.location.write_parquet(rel, rows, row_group_size=SCAN_BATCH)
        self._unlisted.append(rel)
        return Segment(rel, shards, rows.num_rows)

    def _merge(self, kind: Kind, older: Segment, newer: Segment) -> Segment:
        merged = self._write_segment(kind, [self.ledger.read_segment(kind, s) for s in (older, newer)],
                                     older.shards | newer.shards)
        self._retired.extend([older.rel, newer.rel])
        return merged

    def _next_segment(self, kind: Kind) -> int:
        names = [n for n in self.location.listdir(self._rel("index")) if n.startswith(f"{kind}-")]
        numbers = [int(n.split("-")[1].split(".")[0]) for n in names if n.split("-")[1].split(".")[0].isdigit()]
        return max(numbers, default=0) + 1

    def _write_manifest(self, kind: Kind, segments: list[Segment]) -> None:
        """The manifest is the index: written after its segments, before what it retires is removed,
        so a reader always finds every segment its manifest lists (or reloads it)."""
        doc = {"segments": [{"file": s.rel.rsplit("/", 1)[-1], "shards": shard_ranges(s.shards), "rows": s.rows}
                            for s in segments], "compacted": time.time()}
        self.location.write_json(index_manifest(self.key, kind), doc)
        self._unlisted.clear()
        self.ledger.set_segments(kind, segments)
        for rel in self._retired:
            if self.location.exists(rel):
                self.location.remove(rel)
        self._retired.clear()

    @contextmanager
    def _indexing(self) -> Iterator[None]:
        """Segments written for a manifest that never was (a full disk, an error) are listed nowhere: removed
        on the way out, so a failed compaction, collection or repair leaves the index files as they were."""
        try:
            yield
        except BaseException:
            for rel in self._unlisted:
                with suppress(OSError):  # the error being raised is the one to report
                    self.location.remove(rel)
            self._unlisted.clear()
            self._retired.clear()  # still listed by the manifest on disk
            raise

    def _note_schema_version(self) -> None:
        """A store of an older minor version that gains segments is of this version now."""
        manifest = self.location.read_json("vlcache.json")
        if tuple(map(int, manifest["schema_version"].split("."))) < tuple(map(int, SCHEMA_VERSION.split("."))):
            self.location.write_json("vlcache.json", {**manifest, "schema_version": SCHEMA_VERSION})

    # -- collecting -----------------------------------------------------------------------------

    def drop_shard(self, kind: Kind, shard: int) -> int:
        """Forget a committed shard whose content no dataset needs; return the bytes freed. The caller
        holds the space's lease. The order keeps a crash harmless: out of the index first; then without
        its part the shard is only pending (an extraction would encode it again); without its plan rows
        its number is free; its Zarr shards, deleted last, are at worst bytes nobody reads until the
        number is reused."""
        self._unindex(kind, shard)
        self.location.remove(part_path(self.key, kind, shard))
        self.ledger.forget_commit(kind, shard)
        self._unplan(kind, shard)
        freed = 0
        for name in self.arrays(kind):
            rel = self._shard_file(name, shard)
            if self.location.exists(rel):
                freed += self.location.fs.size(self.location.path(rel))
                self.location.remove(rel)
        self._asked.pop(kind, None)
        self._found.pop(kind, None)
        return freed

    def _unindex(self, kind: Kind, shard: int) -> None:
        segments = list(self.ledger.segments(kind))
        for i, segment in enumerate(segments):
            if shard in segment.shards:  # first: a shard number reused later must never find these rows indexed
                rows = self.ledger.read_segment(kind, segment)
                rows = rows.filter(pa.array(self.geometry.shard_of(rows["row"].to_numpy()) != shard))
                with self._indexing():
                    if rows.num_rows:
                        segments[i] = self._write_segment(kind, [rows], segment.shards - {shard})
                    else:
                        del segments[i]
                    self._retired.append(segment.rel)
                    self._write_manifest(kind, segments)
                return

    def _unplan(self, kind: Kind, shard: int) -> None:
        """Drop the shard's rows from its plan file, which is split around it: every plan file keeps
        covering consecutive shards, each holding rows."""
        for plan in self.ledger.plan_files(kind):
            if not plan.first <= shard <= plan.last:
                continue
            rows = self.location.read_parquet(plan.rel)
            shards = self.geometry.shard_of(rows["row"].to_numpy())
            before, after = rows.filter(pa.array(shards < shard)), rows.filter(pa.array(shards > shard))
            if after.num_rows:
                first_after = int(np.min(self.geometry.shard_of(after["row"].to_numpy())))
                self.location.write_parquet(plan_path(self.key, kind, first_after), after, row_group_size=SCAN_BATCH)
            if before.num_rows:
                self.location.write_parquet(plan.rel, before, row_group_size=SCAN_BATCH)
            else:
                self.location.remove(plan.rel)
            break
        self.ledger.forget_plans(kind)

