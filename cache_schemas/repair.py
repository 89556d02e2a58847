"""`repair`: rebuild the metadata a store can derive from what it still holds, and say exactly what it
cannot. Each space is repaired holding its writer lease, the datasets holding theirs, so repair never races
an extraction; every file is written atomically, and a second run finds nothing to do.

Derivable: a commit record (from the index's rows of its shard, else its plan's, and the checksums of the
shard's arrays as they are now), the index (from the commit records), a plan file (from the commit records
of the shards it named), a space's `space.json` (from the copy in its Zarr group's attributes), a dataset's
manifest (from its tables), `vlcache.json`. Not derivable: a dataset's tables (its source's content), a
space's arrays, a `space.json` whose Zarr attributes are damaged too."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import lease, tables
from .embeddings import SpaceEmbeddings, checksum, parse_space
from .errors import DamagedMetadataError, StoreNotFoundError
from .layout import EMBEDDINGS, KINDS, SPACE_SPEC, STORE_MANIFEST, Kind, dataset_dir, part_path, plan_path, space_dir
from .ledger import PART_SCHEMAS, PLAN_SCHEMAS, SCAN_BATCH
from .location import Location
from .store import DATASET_NAME, REACH_STORE, DatasetTables, Store, dataset_manifest, space_lease
from .verify import DATASET_TABLES, committed_block, index_damage, plan_damage, unrecorded_shards
from .version import SCHEMA_VERSION, parse_schema_version
from .writer import SpaceWriter

PURPOSE = "vlcache cache repair"
LOST_ERROR = "failed (its message was lost with the commit record; vlcache cache repair rebuilt it)"


@dataclass
class RepairReport:
    repaired: list[str] = field(default_factory=list)  # what was rebuilt or removed, a line each
    cannot: list[str] = field(default_factory=list)  # what could not be, each with why and what to do instead


def repair(uri: str, storage_options: dict[str, Any] | None = None, wait: float = lease.WAIT) -> RepairReport:
    """Repair the store at `uri`; never creates one (a folder with no `vlcache.json`, dataset manifest or
    space arrays is refused). Waits up to `wait` s for each lease's holder."""
    location = Location(str(uri), storage_options or {})
    with location.reaching("the store", REACH_STORE):
        if not location.exists(STORE_MANIFEST) and not _holds_a_store(location):
            raise StoreNotFoundError(f"no vlcache store at {uri} ({STORE_MANIFEST} is missing)")
    report = RepairReport()
    _store_manifest(location, report)
    _removed(report, location.remove_partials(older_than=lease.TTL, recursive=False))  # vlcache.json's, probes
    with lease.hold(location, "datasets", PURPOSE, wait=wait):
        _removed(report, location.remove_partials("datasets") + location.remove_partials(
            "locks/datasets", older_than=lease.TTL))
        _lease_records(location, "datasets", report)
        for name in location.listdir("datasets"):
            if DATASET_NAME.fullmatch(name) and location.exists(f"{dataset_dir(name)}/manifest.json"):
                _dataset(location, name, report)
    # also the leases of spaces never created (an extraction that died first): their records may be damaged too
    prefix = space_lease("")
    leased = {name.removeprefix(prefix) for name in location.listdir("locks") if name.startswith(prefix)}
    for key in sorted(set(location.listdir("spaces")) | leased):
        with lease.hold(location, space_lease(key), PURPOSE, wait=wait):
            _removed(report, location.remove_partials(space_dir(key)) + location.remove_partials(
                f"locks/{space_lease(key)}", older_than=lease.TTL))
            _lease_records(location, space_lease(key), report)
            if _space_spec(location, key, report):
                space = SpaceWriter.open(location, key)
                for kind in KINDS:
                    _space_kind(space, kind, report)
    return report


def _holds_a_store(location: Location) -> bool:
    """A store that lost its `vlcache.json`: a dataset manifest or a space's arrays, not merely a folder
    that happens to be called `datasets`."""
    return any(location.exists(f"{dataset_dir(n)}/manifest.json") for n in location.listdir("datasets")) or any(
        location.exists(f"{space_dir(k)}/{EMBEDDINGS}") for k in location.listdir("spaces"))


def _removed(report: RepairReport, paths: list[str]) -> None:
    report.repaired += [f"removed {p}, left by a write that was cut short" for p in paths]


def _lease_records(location: Location, name: str, report: RepairReport) -> None:
    """Remove the unreadable records of lease `name`, which repair holds: its own record supersedes them."""
    for rel, exc in lease.damaged_records(location, name).items():
        location.remove(rel)
        report.repaired.append(f"removed {exc.path}, which {exc.why}: a lease record, superseded by repair's own")


# -- the store and its datasets ---------------------------------------------------------------------


def _store_manifest(location: Location, report: RepairReport) -> None:
    """`vlcache.json` holds only the format, a schema version and a date: rewritten as this vlcache's
    version where it is missing or unreadable. A readable version of another major is never touched."""
    try:
        version = location.read_json(STORE_MANIFEST, keys=("schema_version",))["schema_version"]
        if isinstance(version, str) and re.fullmatch(r"\d+\.\d+", version):
            parse_schema_version(version)  # another major: SchemaVersionError, and nothing is written
            return
        why = f"holds no schema version ({version!r})"
    except FileNotFoundError:
        why = "is missing"
    except DamagedMetadataError as exc:
        why = exc.why
    location.write_json(STORE_MANIFEST, {"format": "vlcache", "schema_version": SCHEMA_VERSION,
                                         "created": None, "repaired": _now()})
    report.repaired.append(f"rewrote {location.url(STORE_MANIFEST)}, which {why}, as schema {SCHEMA_VERSION} "
                           "(its creation date is lost)")


def _dataset(location: Location, name: str, report: RepairReport) -> None:
    base = dataset_dir(name)
    damaged_tables = []
    conformed = {}
    for table in DATASET_TABLES:
        try:
            conformed[table] = getattr(DatasetTables(location, name, {}), table)
        except DamagedMetadataError as exc:
            damaged_tables.append(exc)
    for exc in damaged_tables:
        report.cannot.append(f"{exc.path} {exc.why}: a dataset's tables are its source's content, kept nowhere else "
                             f"in the store; remove the dataset (vlcache cache rm {location.uri} {name}) and extract "
                             "it again: its embeddings stay in the spaces and are not encoded again")
    stamps = f"{base}/stamps.parquet"
    if location.exists(stamps):
        try:
            location.read_parquet(stamps)
        except DamagedMetadataError as exc:
            location.remove(stamps)
            report.repaired.append(f"removed {exc.path}, which {exc.why}: what the last extraction saw of the "
                                   "source's files, which the next extraction reads again")
    try:
        Store(location, writable=False).dataset(name)
        return
    except DamagedMetadataError as exc:
        if damaged_tables:
            report.cannot.append(f"{exc.path} {exc.why}, and cannot be rebuilt from its damaged tables")
            return
        source = _salvaged_source(location, f"{base}/manifest.json")
        location.write_json(f"{base}/manifest.json", dataset_manifest(name, conformed, source))
        report.repaired.append(f"rebuilt {exc.path}, which {exc.why}, from the dataset's tables"
                               + ("" if source.get("format") != "unknown" else " (its source is unknown)"))


def _salvaged_source(location: Location, rel: str) -> dict[str, Any]:
    """The damaged manifest's `source`, where it still parses; it is provenance, not content."""
    try:
        source = location.read_json(rel).get("source")
    except (DamagedMetadataError, AttributeError):
        source = None
    return source if isinstance(source, dict) else {"format": "unknown", "uri": None}


# -- spaces ---------------------------------------------------------------------------------------


def _space_spec(location: Location, key: str, report: RepairReport) -> bool:
    """Whether the space can be opened, its `space.json` rebuilt from its Zarr group's attributes if need
    be. A folder with no spec, plans or commits is a creation cut short: the next extract creates it."""
    rel = f"{space_dir(key)}/{SPACE_SPEC}"
    if not location.exists(rel) and key not in Store(location, writable=True).specless_spaces():
        return False
    try:
        SpaceEmbeddings.open(location, key)
        return True
    except (DamagedMetadataError, FileNotFoundError) as exc:
        why = exc.why if isinstance(exc, DamagedMetadataError) else "is missing"
    attributes = f"{space_dir(key)}/{EMBEDDINGS}/zarr.json"
    try:
        doc = location.read_json(attributes, keys=("attributes",))
        with location.parsing(attributes, "a Zarr group holding a vlcache space"):
            copy = doc["attributes"]["vlcache"]
            spec, geometry = parse_space(location, attributes, key, copy["space"], copy["geometry"])
    except (DamagedMetadataError, FileNotFoundError) as exc:
        also = exc.why if isinstance(exc, DamagedMetadataError) else "is missing"
        report.cannot.append(f"{location.url(rel)} {why}, and the copy of the spec in {location.url(attributes)} "
                             f"{also}: restore {SPACE_SPEC} from a copy of the store (the space's shards are not "
                             "checked or repaired until then)")
        return False
    location.write_json(rel, {"spec": spec.to_json(), "geometry": asdict(geometry)})
    report.repaired.append(f"rebuilt {location.url(rel)}, which {why}, from the copy in its Zarr group's attributes")
    return True


def _space_kind(space: SpaceWriter, kind: Kind, report: RepairReport) -> None:
    """Commit records first (they may need the index's rows), then plans and the index (built from them)."""
    broken = _commit_records(space, kind, report)
    _plans(space, kind, report)
    damage = index_damage(space, kind)
    if damage:
        shards = [s for s in space.listed_shards(kind) if s not in broken]
        space.reindex(kind, shards)
        for exc in damage:
            report.repaired.append(f"rebuilt the index of {space.key} {kind} ({exc.path} {exc.why}) from its "
                                   f"{len(shards)} commit records")


def _commit_records(space: SpaceWriter, kind: Kind, report: RepairReport) -> set[int]:
    """Rebuild the commit records that are unreadable, or gone where the index covers their shard; return
    the shards whose record could not be rebuilt."""
    listed = space.listed_shards(kind)
    wanted: dict[int, DamagedMetadataError] = {}
    for shard in listed:
        try:
            space.part(kind, shard)
        except DamagedMetadataError as exc:
            wanted[shard] = exc
    for shard in unrecorded_shards(space, kind, listed):
        wanted[shard] = space.location.missing(part_path(space.key, kind, shard))
    if not wanted:
        return set()
    rows, source = _known_rows(space, kind, set(wanted))
    broken = set()
    for shard, exc in sorted(wanted.items()):
        if shard not in rows:
            report.cannot.append(f"{exc.path} {exc.why}, and neither the index nor a plan holds the shard's rows: "
                                 "restore it from a copy, or delete it (the next extract encodes its content again)")
            broken.add(shard)
            continue
        try:
            done = _recommit(space, kind, shard, rows[shard].sort_by("row"))
        except _Unrebuildable as why:
            report.cannot.append(f"{exc.path} {exc.why}, and {why}")
            broken.add(shard)
            continue
        report.repaired.append(f"rebuilt {exc.path}, which {exc.why}, from {source[shard]} and the shard's "
                               f"arrays{done}")
    return broken


def _known_rows(space: SpaceWriter, kind: Kind, shards: set[int]) -> tuple[dict[int, pa.Table], dict[int, str]]:
    """The committed rows of `shards`, from the readable index segments that cover them (exact, errors
    included), else their planned rows (no error column) from the readable plan files."""
    found: dict[int, pa.Table] = {}
    source: dict[int, str] = {}
    for what, schema, files in (("the index", PART_SCHEMAS[kind], _segment_files(space, kind)),
                                ("its plan", PLAN_SCHEMAS[kind], _plan_files(space, kind, shards))):
        for rel, covers in files:
            looking = (covers & shards) - set(found)
            if not looking:
                continue
            try:
                batches = list(space.ledger.batches(rel, schema, "source of rows"))
            except DamagedMetadataError:  # a damaged file holds nothing to rebuild from
                continue
            for shard in looking:
                held = [b.filter(pa.array(space.geometry.shard_of(b["row"].to_numpy()) == shard)) for b in batches]
                table = pa.Table.from_batches(held, schema=schema)
                if table.num_rows:
                    found[shard], source[shard] = table, what
    return found, source


def _segment_files(space: SpaceWriter, kind: Kind) -> list[tuple[str, set[int]]]:
    try:
        return [(s.rel, set(s.shards)) for s in space.ledger.segments(kind)]
    except DamagedMetadataError:
        return []


def _plan_files(space: SpaceWriter, kind: Kind, shards: set[int]) -> list[tuple[str, set[int]]]:
    """Every plan file, as possibly holding any of `shards` (a damaged footer cannot say which)."""
    folder = f"{space_dir(space.key)}/plans"
    return [(f"{folder}/{name}", shards) for name, _ in _plan_names(space, kind)]


def _plan_names(space: SpaceWriter, kind: Kind) -> list[tuple[str, int]]:
    """(name, first shard) of every plan file of `kind`, by first shard."""
    names = space.location.listdir(f"{space_dir(space.key)}/plans")
    found = [(n, re.fullmatch(rf"{kind}-(\d+)\.parquet", n)) for n in names]
    return sorted(((n, int(m.group(1))) for n, m in found if m), key=lambda f: f[1])


class _Unrebuildable(Exception):
    """Why a commit record cannot be rebuilt from what the store holds."""


DAMAGED_ARRAYS = ("the shard's arrays are damaged too, so its content must be encoded again: extract the datasets "
                  "that use it into a new store, or restore the space from a copy")


def _recommit(space: SpaceWriter, kind: Kind, shard: int, rows: pa.Table) -> str:
    """Commit `shard` again, with the checksums of its arrays as they are: only where every row that was
    encoded reads back finite and not all zeros (the read check). Returns what to add to the report line."""
    numbers = rows["row"].to_numpy()
    if len(np.unique(numbers)) != len(numbers) or numbers[-1] - numbers[0] + 1 != len(numbers):
        raise _Unrebuildable("its rows are not one run of consecutive rows")
    token_rows = None
    if kind == "texts":
        base, total = space.token_base(shard), int(pc.sum(rows["n_tokens"]).as_py() or 0)
        if int(rows["offset"][0].as_py()) != base:
            raise _Unrebuildable("its texts' tokens do not start at the shard's first token row")
        token_rows = (base, base + total)
    blocks = {name: committed_block(space, kind, name, rows, {"token_rows": token_rows}) for name in space.arrays(kind)}
    failed = _failed_rows(space, blocks, len(rows))
    if kind == "texts" and failed.any():
        raise _Unrebuildable(DAMAGED_ARRAYS)
    note = ""
    if "error" in rows.column_names:  # from the index: exact
        if (failed != pc.is_valid(rows["error"]).to_numpy(zero_copy_only=False)).any():
            raise _Unrebuildable(DAMAGED_ARRAYS)
    else:  # from the plan: an image that failed was committed as zeros in every array
        rows = rows.append_column("error", pa.array([LOST_ERROR if f else None for f in failed], pa.string()))
        if failed.any():
            note = (f"; {int(failed.sum())} rows read back as zeros and are recorded as failed images "
                    "(vlcache extract --retry-failed encodes them again)")
    space.commit(kind, shard, rows, {name: checksum(block) for name, block in blocks.items()}, token_rows)
    return f" ({len(rows)} rows, checksums of the arrays as they are now){note}"


def _failed_rows(space: SpaceWriter, blocks: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Rows all zeros in every row-per-item array (what a failed image is committed as); raises where any
    array holds non-finite numbers, zeros in some arrays only, or zero token rows: damage."""
    failed, some = np.ones(n, bool), np.zeros(n, bool)
    for name, block in blocks.items():
        flat = block.reshape(len(block), -1)
        zero = ~flat.any(axis=1)
        if not np.isfinite(flat).all() or (space.layouts[name].ragged and zero.any()):
            raise _Unrebuildable(DAMAGED_ARRAYS)
        if not space.layouts[name].ragged:
            failed, some = failed & zero, some | zero
    if (some & ~failed).any():
        raise _Unrebuildable(DAMAGED_ARRAYS)
    return failed


def _plans(space: SpaceWriter, kind: Kind, report: RepairReport) -> None:
    """A damaged plan file, rewritten from the commit records of the shards it named (from its first shard
    to the next plan file's): one file per run of consecutive committed shards, as plans are. Shards it
    planned that had not committed are forgotten: the next extract plans their content again."""
    damaged = {exc.path: exc for exc in plan_damage(space, kind)}
    if not damaged:
        return
    folder = f"{space_dir(space.key)}/plans"
    plans = _plan_names(space, kind)
    committed = set(space.listed_shards(kind))
    for i, (name, first) in enumerate(plans):
        exc = damaged.get(space.location.url(f"{folder}/{name}"))
        if exc is None:
            continue
        end = plans[i + 1][1] if i + 1 < len(plans) else None
        runs = _runs(sorted(s for s in committed if s >= first and (end is None or s < end)))
        for run in runs:
            plan = pa.concat_tables([space.part(kind, s)[0].drop_columns(["error"]) for s in run])
            space.location.write_parquet(plan_path(space.key, kind, run[0]),
                                         tables.conform(plan, PLAN_SCHEMAS[kind], "plan"), row_group_size=SCAN_BATCH)
        if not runs or plan_path(space.key, kind, runs[0][0]) != f"{folder}/{name}":
            space.location.remove(f"{folder}/{name}")
        shown = ", ".join(f"{r[0]}-{r[-1]}" for r in runs) or "none"
        report.repaired.append(f"rebuilt {exc.path}, which {exc.why}, from the commit records of its shards "
                               f"(committed: {shown}; any it planned that had not committed are planned again by "
                               "the next extract)")
    space.ledger.forget_plans(kind)


def _runs(shards: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for shard in shards:
        if runs and shard == runs[-1][-1] + 1:
            runs[-1].append(shard)
        else:
            runs.append([shard])
    return runs


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
