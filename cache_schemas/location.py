"""A store's location: a local path or any fsspec URL (s3://, gs://, memory://), with the few file
operations the store needs. Every write is atomic: a reader sees the old file or the new one, never
half of one."""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .errors import DamagedStoreError, StoreBusyError, StoreNotWritableError


@dataclass(frozen=True)
class Location:
    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)

    @cached_property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(self.uri, **self.storage_options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_root[0]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str = "") -> str:
        root = self._fs_root[1].rstrip("/")
        return f"{root}/{rel}" if rel else root

    def url(self, rel: str = "") -> str:
        return self.path(rel) if self.is_local else self.fs.unstrip_protocol(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names directly under `rel`, sorted; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                return pq.read_table(f, columns=columns)
        except pa.ArrowInvalid as exc:  # truncated or overwritten: never a table to guess from
            raise DamagedStoreError(f"{self.url(rel)} cannot be read as Parquet ({exc}); run vlcache cache "
                                    f"verify {self.uri}") from None

    def read_parquet_schema(self, rel: str) -> pa.Schema:
        """The schema and its metadata, from the footer alone."""
        with self.fs.open(self.path(rel), "rb") as f:
            return pq.read_schema(f)

    def write_bytes(self, rel: str, data: bytes, exclusive: bool = False) -> None:
        """Write atomically. With `exclusive`, fail with StoreBusyError if the file already exists."""
        path = self.path(rel)
        if not self.is_local:
            # One PUT is atomic on object stores; `create` is a conditional PUT (If-None-Match: *).
            try:
                self.fs.pipe_file(path, data, mode="create" if exclusive else "overwrite")
            except (FileExistsError, PermissionError) as exc:
                if not exclusive:
                    raise
                raise StoreBusyError(f"{self.url(rel)} already exists: another writer took it first") from exc
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                try:
                    os.link(tmp, path)  # link, unlike rename, refuses to replace an existing file
                except FileExistsError:
                    raise StoreBusyError(f"{path} already exists: another writer took it first") from None
            else:
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_json(self, rel: str, value: Any, exclusive: bool = False) -> None:
        self.write_bytes(rel, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), exclusive)

    def remove(self, rel: str, recursive: bool = False) -> None:
        self.fs.rm(self.path(rel), recursive=recursive)

    def write_parquet(self, rel: str, table: pa.Table, exclusive: bool = False, row_group_size: int | None = None
                      ) -> None:
        """`row_group_size`: rows a reader decodes at a time (Parquet's default is a million)."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_size)
        self.write_bytes(rel, buffer.getvalue(), exclusive=exclusive)

    def zarr_store(self, rel: str, read_only: bool):
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path(rel), read_only=read_only)
        return FsspecStore.from_url(self.url(rel), storage_options=self.storage_options, read_only=read_only)

    def ensure_writable(self) -> None:
        """Create the root and prove a file can be written there, before any work is done."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.path(), exist_ok=True)
            self.write_bytes(probe, b"")
            self.fs.rm_file(self.path(probe))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise StoreNotWritableError(f"cannot write the store at {self.uri}: {reason}") from None
