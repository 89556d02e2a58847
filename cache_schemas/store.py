"""A vlcache store: named datasets (items referring to content by hash) and embedding spaces
(one per encoder spec, holding the arrays). `open_store` is the entry point for readers."""

from __future__ import annotations

import difflib
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow as pa

from . import layout, lease, tables
from .embeddings import SpaceEmbeddings
from .errors import (
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


def open_store(uri: str, mode: str = "r", storage_options: dict[str, Any] | None = None) -> Store:
    """Open a store: mode "r" reads an existing one; "a" creates it if needed and allows writes."""
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
    location = Location(str(uri), storage_options or {})
    if mode == "a":
        location.ensure_writable()
        if not location.exists(layout.STORE_MANIFEST):
            location.write_json(layout.STORE_MANIFEST, {
                "format": "vlcache", "schema_version": SCHEMA_VERSION, "created": _now()})
    elif not location.exists(layout.STORE_MANIFEST):
        raise StoreNotFoundError(f"no vlcache store at {uri} ({layout.STORE_MANIFEST} is missing)")
    store = Store(location, writable=mode == "a")
    parse_schema_version(store.manifest.get("schema_version"))
    return store


@dataclass(frozen=True)
class DatasetTables:
    """A registered dataset: its manifest and tables, read on first use."""

    location: Location
    name: str
    manifest: dict[str, Any]

    def _read(self, table: str, schema: pa.Schema) -> pa.Table:
        rel = f"{layout.dataset_dir(self.name)}/{table}.parquet"
        return tables.conform(self.location.read_parquet(rel), schema, f"{self.name}/{table}")

    def column(self, table: str, name: str) -> pa.ChunkedArray:
        """One column of one of the dataset's tables, read alone (its hashes, say)."""
        rel = f"{layout.dataset_dir(self.name)}/{table}.parquet"
        try:
            return self.location.read_parquet(rel, columns=[name])[name]
        except KeyError:
            raise InvalidSpecError(f"table {self.name}/{table} has no column {name!r}") from None

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
        """What the last extraction saw of the source's image files (empty before schema 1.3)."""
        if not self.location.exists(f"{layout.dataset_dir(self.name)}/stamps.parquet"):
            return tables.STAMPS.empty_table()
        return self._read("stamps", tables.STAMPS)


class Store:
    def __init__(self, location: Location, writable: bool):
        self.location = location
        self.writable = writable

    def __repr__(self) -> str:
        return f"Store({self.location.uri!r}, writable={self.writable})"

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return self.location.read_json(layout.STORE_MANIFEST)

    # -- datasets -------------------------------------------------------------------------------

    def dataset_names(self) -> list[str]:
        names = self.location.listdir("datasets")
        return [n for n in names if self.location.exists(f"{layout.dataset_dir(n)}/manifest.json")]

    def dataset(self, name: str) -> DatasetTables:
        rel = f"{layout.dataset_dir(name)}/manifest.json"
        if not DATASET_NAME.fullmatch(name) or not self.location.exists(rel):
            hint = _suggest(name, self.dataset_names())
            raise UnknownDatasetError(f"no dataset {name!r} in {self.location.uri}{hint}")
        return DatasetTables(self.location, name, self.location.read_json(rel))

    def register_dataset(self, name: str, items: pa.Table, images: pa.Table, texts: pa.Table,
                         errors: pa.Table, source: dict[str, Any], replace: bool = False,
                         stamps: pa.Table | None = None) -> DatasetTables:
        """Write a dataset's tables, then its manifest (the commit). The same content again is a no-op
        (but for `stamps`, what an extraction saw of its files, kept up to date when given); different
        content under an existing name is refused, or with `replace` takes its place."""
        self._require_writable()
        if not DATASET_NAME.fullmatch(name):
            raise InvalidSpecError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (max 128)")
        conformed = {
            "items": tables.conform(items, tables.ITEMS, "items"),
            "images": tables.conform(images, tables.DATASET_IMAGES, "images"),
            "texts": tables.conform(texts, tables.DATASET_TEXTS, "texts"),
            "errors": tables.conform(errors, tables.ERRORS, "errors"),
        }
        fingerprint = _fingerprint(conformed)
        with lease.hold(self.location, "datasets", f"registering dataset {name}"):
            registered = self._register(name, conformed, fingerprint, source, replace)
            if stamps is not None:  # after the manifest: a cache of the source, not content
                stamps = tables.conform(stamps, tables.STAMPS, "stamps")
                if not registered.stamps.equals(stamps):
                    self.location.write_parquet(f"{layout.dataset_dir(name)}/stamps.parquet", stamps)
                    registered.__dict__.pop("stamps", None)
            return registered

    def _register(self, name: str, conformed: dict[str, pa.Table], fingerprint: str,
                  source: dict[str, Any], replace: bool) -> DatasetTables:
        base = layout.dataset_dir(name)
        if name in self.dataset_names():
            existing = self.dataset(name)
            if existing.manifest.get("fingerprint") == fingerprint:
                return existing
            if not replace:
                raise DatasetConflictError(
                    f"dataset {name!r} already exists in {self.location.uri} with different content; "
                    "extract under another --dataset name, or pass --replace"
                )
            # The manifest goes first: until the new one is written there is no dataset, never a mixed one.
            self.location.remove(f"{base}/manifest.json")
        for table_name, table in conformed.items():
            self.location.write_parquet(f"{base}/{table_name}.parquet", table)
        manifest = {
            "name": name,
            "fingerprint": fingerprint,
            "source": source,
            "counts": {"items": conformed["items"].num_rows, "images": conformed["images"].num_rows,
                       "texts": conformed["texts"].num_rows, "read_errors": conformed["errors"].num_rows},
            "created": _now(),
        }
        self.location.write_json(f"{base}/manifest.json", manifest)
        return DatasetTables(self.location, name, manifest)

    def remove_dataset(self, name: str) -> None:
        """Unregister a dataset. Its embeddings stay in the spaces (other datasets may share them)."""
        self._require_writable()
        self.dataset(name)  # one line if there is no such dataset
        with lease.hold(self.location, "datasets", f"removing dataset {name}"):
            self.location.remove(f"{layout.dataset_dir(name)}/manifest.json")  # the dataset is gone from here on
            self.location.remove(layout.dataset_dir(name), recursive=True)

    # -- embedding spaces -----------------------------------------------------------------------

    def space_keys(self) -> list[str]:
        keys = self.location.listdir("spaces")
        return [k for k in keys if self.location.exists(f"{layout.space_dir(k)}/{layout.SPACE_SPEC}")]

    def space(self, key: str) -> SpaceEmbeddings:
        """A space by its key, or by a model name when the store holds exactly one space of it."""
        keys = self.space_keys()
        if key not in keys:
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
        with lease.hold(self.location, f"space-{spec.key}", purpose, wait=wait, on_wait=on_wait):
            if spec.key in self.space_keys():
                yield SpaceWriter.open(self.location, spec.key)
            else:
                yield SpaceWriter.create(self.location, spec, geometry)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.location.uri} was opened read-only; open_store(uri, mode='a') to write")


def _fingerprint(conformed: dict[str, pa.Table]) -> str:
    digest = hashlib.sha256()
    for name in sorted(conformed):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, conformed[name].schema) as writer:
            writer.write_table(conformed[name].combine_chunks())
        digest.update(name.encode() + sink.getvalue().to_pybytes())
    return digest.hexdigest()


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; datasets: {known or 'none'}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
