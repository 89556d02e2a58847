"""A space's ledger: what it has planned (plan files), what has committed (a commit record, or part,
per shard) and the index of committed rows (segments a manifest lists).

The ledger is read once, from file names, Parquet footers and the index manifest; rows are scanned
on demand, a batch at a time, and kept only where the caller asked for them (the hashes of one
dataset, the shards still to encode). Nothing here holds a space's every hash: what a space of 10^9
rows costs a reader or a planner is the part of it they ask about. A writer updates its ledger in
place (`SpaceWriter`), so one extraction reads each plan file once."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import tables
from .hashes import HashSet
from .layout import Geometry, Kind, index_manifest, index_path, part_path, space_dir
from .location import Location

PART_SCHEMAS = {"images": tables.IMAGE_PART, "texts": tables.TEXT_PART}
PLAN_SCHEMAS = {kind: pa.schema([f for f in schema if f.name != "error"]) for kind, schema in PART_SCHEMAS.items()}
SCAN_BATCH = 65_536  # rows decoded at a time by a scan (plans and segments are written in row groups of it)
CHECK_AT_MOST = 64  # uncovered planned shards checked one by one; more, and the parts folder is listed


@dataclass(frozen=True)
class PlanFile:
    rel: str
    first: int  # shards [first, last]: consecutive, each holding rows of this plan
    last: int


@dataclass(frozen=True)
class Segment:
    rel: str
    shards: frozenset[int]  # the shards whose committed rows it holds
    rows: int


class Ledger:
    def __init__(self, location: Location, key: str, geometry: Geometry):
        self.location, self.key, self.geometry = location, key, geometry
        self._plan_files: dict[Kind, list[PlanFile]] = {}
        self._segments: dict[Kind, list[Segment]] = {}
        self._committed: dict[Kind, set[int]] = {}
        self._pending_rows: dict[Kind, pa.Table] = {}
        self._all_rows: dict[Kind, pa.Table] = {}

    def _rel(self, name: str) -> str:
        return f"{space_dir(self.key)}/{name}"

    # -- plans ----------------------------------------------------------------------------------

    def plan_files(self, kind: Kind) -> list[PlanFile]:
        """Every plan file of `kind`, from names and footers (no rows read)."""
        if kind not in self._plan_files:
            names = [n for n in self.location.listdir(self._rel("plans"))
                     if n.startswith(f"{kind}-") and n.endswith(".parquet")]
            self._plan_files[kind] = [self.plan_file(self._rel(f"plans/{n}")) for n in names]
        return self._plan_files[kind]

    def plan_file(self, rel: str) -> PlanFile:
        """A plan file's shards, from its footer."""
        rows = _row_range(self.location, rel)
        if rows is None:
            raise self.location.damaged(rel, "holds no rows")
        return PlanFile(rel, int(self.geometry.shard_of(rows[0])), int(self.geometry.shard_of(rows[1])))

    def planned_shards(self, kind: Kind) -> set[int]:
        return {s for f in self.plan_files(kind) for s in range(f.first, f.last + 1)}

    def next_free_shard(self, kind: Kind) -> int:
        """The first shard after every planned one: new content never shares a shard with old."""
        return max((f.last for f in self.plan_files(kind)), default=-1) + 1

    def pending_shards(self, kind: Kind) -> list[int]:
        """Planned shards without a commit record: the next extraction encodes them."""
        return sorted(self.planned_shards(kind) - self.committed(kind))

    def scan_plans(self, kind: Kind, wanted: pa.Array | pa.ChunkedArray | None = None) -> pa.Array:
        """One pass over the plan files: keeps the rows of pending shards (`pending_rows`) and returns
        which of `wanted` (hashes) some plan already holds."""
        pending = set(self.pending_shards(kind))
        value_set = HashSet(wanted) if wanted is not None else None
        known, rows = [], []
        for plan in self.plan_files(kind):
            if not pending.intersection(range(plan.first, plan.last + 1)) and value_set is None:
                continue
            holds_pending = bool(pending.intersection(range(plan.first, plan.last + 1)))
            schema = PLAN_SCHEMAS[kind] if holds_pending else pa.schema([PLAN_SCHEMAS[kind].field("hash")])
            for batch in self.batches(plan.rel, schema, "plan"):
                if value_set is not None:
                    known.append(value_set.members(batch["hash"]))
                if holds_pending:
                    mine = np.isin(self.geometry.shard_of(batch["row"].to_numpy()), list(pending))
                    if mine.any():
                        rows.append(pa.Table.from_batches([batch]).filter(pa.array(mine)))
        self._pending_rows[kind] = _concat(rows, PLAN_SCHEMAS[kind])
        return pa.chunked_array(known, tables.HASH).combine_chunks() if known else pa.array([], tables.HASH)

    def pending_rows(self, kind: Kind) -> pa.Table:
        """The planned rows of every pending shard."""
        if kind not in self._pending_rows:
            self.scan_plans(kind)
        return self._pending_rows[kind]

    def add_plan(self, kind: Kind, rel: str, plan: pa.Table) -> None:
        """A plan the writer just wrote: its shards are pending, its rows known without a read."""
        rows = plan["row"].to_numpy()
        self.plan_files(kind).append(PlanFile(rel, int(self.geometry.shard_of(rows.min())),
                                              int(self.geometry.shard_of(rows.max()))))
        self._pending_rows[kind] = pa.concat_tables([self.pending_rows(kind),
                                                      tables.conform(plan, PLAN_SCHEMAS[kind], "plan")])

    def forget_plans(self, kind: Kind) -> None:
        self._plan_files.pop(kind, None)
        self._pending_rows.pop(kind, None)

    # -- commits and the index ------------------------------------------------------------------

    def committed(self, kind: Kind) -> set[int]:
        """Shards with a commit record: those the index covers, and those of the few planned shards it
        does not cover whose part exists (no listing of every commit ever made); without an index, or
        while many shards are uncovered (an extraction under way), the listing."""
        if kind not in self._committed:
            covered = self.indexed_shards(kind)
            uncovered = self.planned_shards(kind) - (covered or set())
            if covered is None or len(uncovered) > CHECK_AT_MOST:
                self._committed[kind] = set(self.listed_shards(kind))
            else:
                self._committed[kind] = covered | {s for s in uncovered
                                                   if self.location.exists(part_path(self.key, kind, s))}
        return self._committed[kind]

    def committed_shards(self, kind: Kind) -> list[int]:
        return sorted(self.committed(kind))

    def listed_shards(self, kind: Kind) -> list[int]:
        """Shards whose part file exists, by listing the folder (what verify trusts)."""
        names = self.location.listdir(self._rel(f"parts/{kind}"))
        return sorted(int(n.split(".")[0]) for n in names if n.endswith(".parquet") and n.split(".")[0].isdigit())

    def add_commits(self, kind: Kind, shards: Iterable[int]) -> None:
        """Shards a worker has committed (the driver learns it from their results)."""
        self.committed(kind).update(shards)
        if kind in self._pending_rows:
            table = self._pending_rows[kind]
            keep = ~np.isin(self.geometry.shard_of(table["row"].to_numpy()), list(self.committed(kind)))
            self._pending_rows[kind] = table.filter(pa.array(keep))
        self._all_rows.pop(kind, None)

    def forget_commit(self, kind: Kind, shard: int) -> None:
        self.committed(kind).discard(shard)
        self._all_rows.pop(kind, None)

    def segments(self, kind: Kind) -> list[Segment]:
        """The index's segments: from its manifest; for a store of schema 1.2 and before, its one file."""
        if kind not in self._segments:
            manifest = index_manifest(self.key, kind)
            legacy = index_path(self.key, kind)
            if self.location.exists(manifest):
                doc = self.location.read_json(manifest, keys=("segments",))
                with self.location.parsing(manifest, "an index manifest"):
                    self._segments[kind] = [_segment(self._rel(f"index/{s['file']}"), s) for s in doc["segments"]]
            elif self.location.exists(legacy):
                with self.location.parsing(legacy, "an index"), self.location.open_parquet(legacy) as f:
                    footer = self.location.parquet_file(f).metadata
                    shards = json.loads(footer.metadata[b"vlcache"])["shards"]
                    self._segments[kind] = [Segment(legacy, frozenset(int(s) for s in shards), footer.num_rows)]
            else:
                self._segments[kind] = []
        return self._segments[kind]

    def set_segments(self, kind: Kind, segments: list[Segment]) -> None:
        self._segments[kind] = segments
        self._all_rows.pop(kind, None)

    def indexed_shards(self, kind: Kind) -> set[int] | None:
        """The shards the index covers, or None without an index."""
        if not self.segments(kind) and not self.location.exists(index_manifest(self.key, kind)):
            return None
        return set().union(*(s.shards for s in self.segments(kind)))

    def uncovered_commits(self, kind: Kind) -> list[int]:
        """Committed shards no segment covers: their rows are in their parts alone."""
        return sorted(self.committed(kind) - (self.indexed_shards(kind) or set()))

    def part(self, kind: Kind, shard: int) -> tuple[pa.Table, dict]:
        rel = part_path(self.key, kind, shard)
        try:
            table = self.location.read_parquet(rel)
        except FileNotFoundError:  # listed, or named by the index: collected meanwhile (`_reloading`), or lost
            raise self.location.missing(rel) from None
        with self.location.parsing(rel, "a commit record"):
            meta = json.loads(table.schema.metadata[b"vlcache"])
            if not isinstance(meta.get("checksums"), dict):
                raise ValueError("no checksums in its vlcache metadata")
            return tables.conform(table, PART_SCHEMAS[kind], f"{kind} part {shard}"), meta

    # -- committed rows -------------------------------------------------------------------------

    def row_batches(self, kind: Kind, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Every committed row (failed ones too), a batch at a time: the index's segments, then the
        parts of shards no segment covers."""
        schema = PART_SCHEMAS[kind] if columns is None else pa.schema([PART_SCHEMAS[kind].field(c) for c in columns])
        for segment in self.segments(kind):
            legacy = segment.rel == index_path(self.key, kind)  # an older writer may have rewritten it since
            columns = schema
            if legacy and "row" not in schema.names:
                columns = pa.schema([*schema, PART_SCHEMAS[kind].field("row")])
            for batch in self.batches(segment.rel, columns, "index segment"):
                if legacy:
                    mine = np.isin(self.geometry.shard_of(batch["row"].to_numpy()), list(segment.shards))
                    batch = batch.filter(pa.array(mine)).select(schema.names)
                yield batch
        for shard in self.uncovered_commits(kind):
            yield from self.part(kind, shard)[0].select(schema.names).to_batches()

    def committed_rows(self, kind: Kind) -> pa.Table:
        """Every committed row of `kind`, in one table (as large as the space: for whole-space views)."""
        if kind not in self._all_rows:
            self._all_rows[kind] = self._reloading(kind, lambda: _concat(
                [pa.Table.from_batches([b]) for b in self.row_batches(kind)], PART_SCHEMAS[kind]))
        return self._all_rows[kind]

    def _reloading(self, kind: Kind, scan):
        """`scan`, once more from a fresh manifest if a compaction retired a segment it was reading."""
        try:
            return scan()
        except FileNotFoundError:
            for cached in (self._segments, self._committed, self._plan_files):
                cached.pop(kind, None)
            return scan()

    def lookup(self, kind: Kind, values: pa.Array | pa.ChunkedArray, column: str = "hash") -> pa.Table:
        """The committed rows (failed ones too) whose `column` (hash, or row) is one of `values`: a scan
        that keeps only those, so its memory is what was asked for."""
        wanted = HashSet(values) if column == "hash" else np.unique(np.asarray(values, dtype=np.int64))

        def member(batch) -> np.ndarray:
            if column == "hash":
                return wanted.contains(batch["hash"])
            return np.isin(np.asarray(batch[column]), wanted)

        if kind in self._all_rows:
            table = self._all_rows[kind]
            return table.filter(pa.array(member(table)))
        return self._reloading(kind, lambda: _concat(
            [pa.Table.from_batches([b]).filter(pa.array(member(b))) for b in self.row_batches(kind)],
            PART_SCHEMAS[kind]))

    def read_segment(self, kind: Kind, segment: Segment) -> pa.Table:
        """A segment's rows, whole (a writer merging or filtering it)."""
        schema = PART_SCHEMAS[kind]
        return pa.Table.from_batches(list(self.batches(segment.rel, schema, "index segment")), schema=schema)

    def batches(self, rel: str, schema: pa.Schema, what: str) -> Iterator[pa.RecordBatch]:
        try:
            opened = self.location.open_parquet(rel)
        except FileNotFoundError:  # listed by the index: retired by a compaction meanwhile (`_reloading`), or lost
            raise self.location.missing(rel) from None
        with self.location.parsing(rel, f"a {what}"), opened as f:
            threads = self.location.arrow_threads  # Location.open_parquet says why
            for batch in self.location.parquet_file(f).iter_batches(SCAN_BATCH, columns=schema.names,
                                                                    use_threads=threads):
                yield pa.RecordBatch.from_arrays([batch[c].cast(schema.field(c).type) for c in schema.names],
                                                 schema=schema)


def _row_range(location: Location, rel: str) -> tuple[int, int] | None:
    """(smallest, largest) `row` of a Parquet file, from its footer's statistics (its rows when a
    writer left none)."""
    with location.parsing(rel, "a plan"), location.open_parquet(rel) as f:
        parquet = location.parquet_file(f)
        meta = parquet.metadata
        column = meta.schema.names.index("row")
        stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)]
        if stats and all(s is not None and s.has_min_max for s in stats):
            return min(s.min for s in stats), max(s.max for s in stats)
        rows = parquet.read(columns=["row"], use_threads=location.arrow_threads)["row"]
    return (pc.min(rows).as_py(), pc.max(rows).as_py()) if len(rows) else None


def _concat(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    parts = [p.select(schema.names) for p in parts if p.num_rows]
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def shard_ranges(shards: Iterable[int]) -> list[list[int]]:
    """Shards as [first, last] ranges: a manifest of a million shards stays small."""
    ranges: list[list[int]] = []
    for shard in sorted(shards):
        if ranges and shard == ranges[-1][1] + 1:
            ranges[-1][1] = shard
        else:
            ranges.append([shard, shard])
    return ranges


def _segment(rel: str, entry: dict) -> Segment:
    """A segment as the index manifest lists it (a field of the wrong type raises: the caller names the file)."""
    return Segment(rel, _expand(entry["shards"]), int(entry["rows"]))


def _expand(ranges: list[list[int]]) -> frozenset[int]:
    return frozenset(s for first, last in ranges for s in range(first, last + 1))
