"""A vlcache store: named datasets (items referring to content by hash) and embedding spaces
(one per encoder spec, holding the arrays). `open_store` is the entry point for readers."""

from __future__ import annotations

import difflib
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow as pa

from . import layout, lease, tables
from .chunk_cache import ChunkCache
from .embeddings import SpaceEmbeddings
from .errors import (
    DamagedMetadataError,
    DatasetConflictError,
    InvalidSpecError,
    StoreNotFoundError,
    UnknownDatasetError,
    UnknownSpaceError,
)
from .location import Location
from .space import EmbeddingSpace
from .version import SCHEMA_VERSION, parse_schema_version
from .writer import SpaceWriter

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DATASET_COUNTS = ("items", "images", "texts", "read_errors")  # a dataset manifest's counts, of its four tables
REACH_STORE = "pass --storage-options with the endpoint_url, key and secret that reach it (JSON or @FILE.json)"


def open_store(uri: str, mode: str = "r", storage_options: dict[str, Any] | None = None,
               cache: ChunkCache | None = None) -> Store:
    """Open a store: mode "r" reads an existing one; "r+" writes an existing one; "a" writes one, creating it
    where nothing is (no such path, or an empty folder: only extract and import create stores). A store is
    never made out of a mistyped path by a command that meant to read or maintain one. `cache`: where a
    remote store's chunk files are kept once read (tensor reads only; a local store is read in place)."""
    if mode not in ("r", "r+", "a"):
        raise ValueError(f"mode must be 'r', 'r+' or 'a', got {mode!r}")
    location = Location(str(uri), storage_options or {}, cache)
    with location.reaching("the store", REACH_STORE):  # the first request: where missing credentials show
        if not location.exists(layout.STORE_MANIFEST):
            if mode != "a":
                raise StoreNotFoundError(f"no vlcache store at {uri} ({layout.STORE_MANIFEST} is missing)")
            _require_nothing_at(location, uri)
        if mode != "r":
            location.ensure_writable()
        if mode == "a" and not location.exists(layout.STORE_MANIFEST):
            location.write_json(layout.STORE_MANIFEST, {
                "format": "vlcache", "schema_version": SCHEMA_VERSION, "created": _now()})
    store = Store(location, writable=mode != "r")
    parse_schema_version(store.manifest.get("schema_version"))
    return store


def writable_store(uri: str, storage_options: dict[str, Any] | None = None) -> Store | None:
    """For a command that may create a store (extract, import), before it does any work: the store at
    `uri` opened for writes, or None where there is none yet and `open_store(uri, "a")` may make one.
    Everything that would refuse is refused here, and nothing is created."""
    location = Location(str(uri), storage_options or {})
    with location.reaching("the store", REACH_STORE):
        if location.exists(layout.STORE_MANIFEST):
            return open_store(uri, "r+", storage_options)
        _require_nothing_at(location, uri)
        location.check_creatable()
    return None


def check_dataset_name(name: str) -> None:
    """A dataset's name, checked before anything is written under it."""
    if not DATASET_NAME.fullmatch(name):
        raise InvalidSpecError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (max 128)")


def _require_nothing_at(location: Location, uri: str) -> None:
    """A new store goes where nothing is: a file, or a folder holding anything but another creator's
    passing files (its write probe, a manifest being written), is refused rather than made a store."""
    if location.fs.isfile(location.path()):
        raise StoreNotFoundError(f"{uri} is a file, not a vlcache store: give a new or empty folder")
    found = [name for name in location.listdir("") if not name.startswith((".write-probe-", ".vlcache-probe-"))
             and not name.endswith(".partial")]
    if found and not location.exists(layout.STORE_MANIFEST):  # a store another writer just created is fine
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise StoreNotFoundError(f"{uri} is not a vlcache store ({layout.STORE_MANIFEST} is missing) and not empty "
                                 f"({shown}): give a new or empty folder")


@dataclass(frozen=True)
class DatasetTables:
    """A registered dataset: its manifest and tables, read on first use."""

    location: Location
    name: str
    manifest: dict[str, Any]

    def _read(self, table: str, schema: pa.Schema) -> pa.Table:
        rel = f"{layout.dataset_dir(self.name)}/{table}.parquet"
        read = self._parquet(rel)
        with self.location.parsing(rel, f"table {table}"):
            return tables.conform(read, schema, f"{self.name}/{table}")

    def column(self, table: str, name: str) -> pa.ChunkedArray:
        """One column of one of the dataset's tables, read alone (its hashes, say)."""
        rel = f"{layout.dataset_dir(self.name)}/{table}.parquet"
        try:
            return self._parquet(rel, columns=[name])[name]
        except KeyError:
            raise self.location.damaged(rel, f"has no column {name!r}") from None

    def _parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        try:
            return self.location.read_parquet(rel, columns=columns)
        except FileNotFoundError:  # the manifest, written last, says every table was written
            raise self.location.missing(rel) from None

    @cached_property
    def items(self) -> pa.Table:
        return self._read("items", tables.ITEMS)

    @cached_property
    def images(self) -> pa.Table:
        return self._read("images", tables.DATASET_IMAGES)

    @cached_property
    def texts(self) -> pa.Table:
        return self._read("texts", tables.DATASET_TEXTS)

    @cached_property
    def errors(self) -> pa.Table:
        return self._read("errors", tables.ERRORS)

    @cached_property
    def stamps(self) -> pa.Table:
        """What the last extraction saw of the source's image files (empty before schema 1.3, or where the
        file is damaged: a cache, so the next extraction reads every file again and rewrites it)."""
        if not self.location.exists(f"{layout.dataset_dir(self.name)}/stamps.parquet"):
            return tables.STAMPS.empty_table()
        try:
            return self._read("stamps", tables.STAMPS)
        except DamagedMetadataError:
            return tables.STAMPS.empty_table()


class Store:
    def __init__(self, location: Location, writable: bool):
        self.location = location
        self.writable = writable

    def __repr__(self) -> str:
        return f"Store({self.location.uri!r}, writable={self.writable})"

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return self.location.read_json(layout.STORE_MANIFEST, keys=("schema_version",))

    # -- datasets -------------------------------------------------------------------------------

    def dataset_names(self) -> list[str]:
        names = self.location.listdir("datasets")
        return [n for n in names if self.location.exists(f"{layout.dataset_dir(n)}/manifest.json")]

    def dataset(self, name: str) -> DatasetTables:
        rel = f"{layout.dataset_dir(name)}/manifest.json"
        if not DATASET_NAME.fullmatch(name) or not self.location.exists(rel):
            hint = _suggest(name, self.dataset_names())
            raise UnknownDatasetError(f"no dataset {name!r} in {self.location.uri}{hint}")
        manifest = self.location.read_json(rel, keys=("fingerprint", "source", "counts"))
        counts = manifest["counts"]
        if not isinstance(counts, dict) or not all(isinstance(counts.get(c), int) for c in DATASET_COUNTS):
            raise self.location.damaged(rel, f"holds no counts of {', '.join(DATASET_COUNTS)}")
        return DatasetTables(self.location, name, manifest)

    def register_dataset(self, name: str, items: pa.Table, images: pa.Table, texts: pa.Table,
                         errors: pa.Table, source: dict[str, Any], replace: bool = False,
                         stamps: pa.Table | None = None) -> DatasetTables:
        """Write a dataset's tables, then its manifest (the commit). The same content again is a no-op
        (but for `stamps`, what an extraction saw of its files, kept up to date when given); different
        content under an existing name is refused, or with `replace` takes its place."""
        self._require_writable()
        check_dataset_name(name)
        conformed = {
            "items": tables.conform(items, tables.ITEMS, "items"),
            "images": tables.conform(images, tables.DATASET_IMAGES, "images"),
            "texts": tables.conform(texts, tables.DATASET_TEXTS, "texts"),
            "errors": tables.conform(errors, tables.ERRORS, "errors"),
        }
        fingerprint = _fingerprint(conformed)
        if not replace and self._other_content(name, fingerprint):  # refused before the lease: nothing written
            raise self._conflict(name)
        with lease.hold(self.location, "datasets", f"registering dataset {name}"):
            self._remove_partials("datasets", "datasets")  # what a registration killed mid-write left (few files)
            registered = self._register(name, conformed, fingerprint, source, replace)
            if stamps is not None:  # after the manifest: a cache of the source, not content
                stamps = tables.conform(stamps, tables.STAMPS, "stamps")
                if not registered.stamps.equals(stamps):
                    self.location.write_parquet(f"{layout.dataset_dir(name)}/stamps.parquet", stamps)
                    registered.__dict__.pop("stamps", None)
            return registered

    def _other_content(self, name: str, fingerprint: str) -> bool:
        return name in self.dataset_names() and self.dataset(name).manifest.get("fingerprint") != fingerprint

    def _conflict(self, name: str) -> DatasetConflictError:
        return DatasetConflictError(f"dataset {name!r} already exists in {self.location.uri} with different content; "
                                    "extract under another --dataset name, or pass --replace")

    def _register(self, name: str, conformed: dict[str, pa.Table], fingerprint: str,
                  source: dict[str, Any], replace: bool) -> DatasetTables:
        base = layout.dataset_dir(name)
        if name in self.dataset_names():
            existing = self.dataset(name)
            if existing.manifest.get("fingerprint") == fingerprint:
                return existing
            if not replace:
                raise self._conflict(name)
            # The manifest goes first: until the new one is written there is no dataset, never a mixed one.
            self.location.remove(f"{base}/manifest.json")
        manifest = dataset_manifest(name, conformed, source, fingerprint)
        try:
            for table_name, table in conformed.items():
                self.location.write_parquet(f"{base}/{table_name}.parquet", table)
            self.location.write_json(f"{base}/manifest.json", manifest)
        except Exception:  # a full disk: tables without their manifest are no dataset, so none are left
            with suppress(OSError):
                self.location.remove(base, recursive=True)
            raise
        return DatasetTables(self.location, name, manifest)

    def remove_dataset(self, name: str) -> None:
        """Unregister a dataset. Its embeddings stay in the spaces (other datasets may share them)."""
        self._require_writable()
        try:
            self.dataset(name)  # one line if there is no such dataset
        except DamagedMetadataError:  # a damaged manifest: still a dataset, which can be removed
            pass
        with lease.hold(self.location, "datasets", f"removing dataset {name}"):
            self.location.remove(f"{layout.dataset_dir(name)}/manifest.json")  # the dataset is gone from here on
            self.location.remove(layout.dataset_dir(name), recursive=True)

    # -- embedding spaces -----------------------------------------------------------------------

    def space_keys(self) -> list[str]:
        keys = self.location.listdir("spaces")
        return [k for k in keys if self.location.exists(f"{layout.space_dir(k)}/{layout.SPACE_SPEC}")]

    def specless_spaces(self) -> list[str]:
        """Space folders with plans or commit records but no `space.json`: lost, not absent (a creation cut
        short has neither). Nothing may create them anew over their rows; `repair` rebuilds the spec."""
        return [k for k in self.location.listdir("spaces")
                if not self.location.exists(f"{layout.space_dir(k)}/{layout.SPACE_SPEC}")
                and (self.location.listdir(f"{layout.space_dir(k)}/plans")
                     or self.location.listdir(f"{layout.space_dir(k)}/parts"))]

    def require_specs(self, keys: list[str] | None = None) -> None:
        """A lost `space.json` (of `keys`, or of any space) named in one line, rather than a space not found."""
        lost = [k for k in self.specless_spaces() if keys is None or k in keys]
        if lost:
            raise self.location.missing(f"{layout.space_dir(lost[0])}/{layout.SPACE_SPEC}",
                                        "is missing (the space has commit records)")

    def space(self, key: str) -> SpaceEmbeddings:
        """A space by its key, or by a model name when the store holds exactly one space of it."""
        keys = self.space_keys()
        if key not in keys:
            self.require_specs([key])
            matches = [k for k in keys if SpaceEmbeddings.open(self.location, k).spec.model == key]
            if len(matches) != 1:
                found = f"{len(matches)} spaces of model {key!r}: {matches}" if matches else f"no space {key!r}"
                raise UnknownSpaceError(f"{found} in {self.location.uri}; spaces: {keys or 'none'}")
            key = matches[0]
        return SpaceEmbeddings.open(self.location, key)

    def space_or_only(self, key: str | None) -> SpaceEmbeddings:
        """The space named (a key, or a model with one space), or else the store's only space."""
        if key:
            return self.space(key)
        keys = self.space_keys()
        if len(keys) != 1:
            self.require_specs()
            found = ", ".join(keys) or "none (run vlcache extract first)"
            raise UnknownSpaceError(f"store {self.location.uri} has {len(keys)} embedding spaces; choose one with "
                                    f"--space (a key, or a model): {found}")
        return self.space(keys[0])

    @contextmanager
    def space_writer(self, spec: EmbeddingSpace, geometry: layout.Geometry, purpose: str, *,
                     wait: float = lease.WAIT, on_wait: Callable[[str], None] | None = None
                     ) -> Iterator[SpaceWriter]:
        """The space for `spec` (created if the store lacks it), written by this process alone for
        the block: another writer of the same space waits for it, up to `wait` seconds."""
        self._require_writable()
        with lease.hold(self.location, space_lease(spec.key), purpose, wait=wait, on_wait=on_wait):
            self._remove_partials(space_lease(spec.key))
            self.require_specs([spec.key])  # never new arrays over a space's committed rows
            if spec.key in self.space_keys():
                writer = SpaceWriter.open(self.location, spec.key)
            else:
                writer = SpaceWriter.create(self.location, spec, geometry)
            writer.remove_partials()  # what a writer killed mid-write left: where writers write, not every chunk
            yield writer

    def _remove_partials(self, lease_name: str, folder: str | None = None) -> None:
        """What writers killed mid-write left in the records of the lease (held by the caller; its own renewals
        are younger than a lease's ttl) and under `folder`."""
        self.location.remove_partials(f"locks/{lease_name}", older_than=lease.TTL)
        if folder:
            self.location.remove_partials(folder)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.location.uri} was opened read-only; open_store(uri, mode='r+') to write")


def space_lease(key: str) -> str:
    """The lease every writer of the space holds (`lease.py`)."""
    return f"space-{key}"


def dataset_manifest(name: str, conformed: dict[str, pa.Table], source: dict[str, Any],
                     fingerprint: str | None = None) -> dict[str, Any]:
    """A dataset's manifest, from its conformed tables: what registration writes last (and repair rebuilds)."""
    counts = [conformed[t].num_rows for t in ("items", "images", "texts", "errors")]
    return {"name": name, "fingerprint": fingerprint or _fingerprint(conformed), "source": source,
            "counts": dict(zip(DATASET_COUNTS, counts)), "created": _now()}


def _fingerprint(conformed: dict[str, pa.Table]) -> str:
    digest = hashlib.sha256()
    for name in sorted(conformed):
        sink = pa.BufferOutputStream()
        table = tables.fingerprinted(name, conformed[name])
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        digest.update(name.encode() + sink.getvalue().to_pybytes())
    return digest.hexdigest()


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; datasets: {known or 'none'}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
