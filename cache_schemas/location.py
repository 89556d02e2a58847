"""A store's location: a local path or any fsspec URL (s3://, gs://, memory://), with the few file
operations the store needs. Every write is atomic: a reader sees the old file or the new one, never
half of one."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .errors import (
    DamagedMetadataError,
    MissingMetadataError,
    StoreBusyError,
    StoreNotWritableError,
    UnreachableError,
    VlcacheError,
    disk_full_as_error,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

    from .chunk_cache import ChunkCache


@dataclass(frozen=True)
class Location:
    uri: str
    # Never in a repr: a Location travels in Dask tasks, whose failure logs print their arguments.
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, repr=False)
    cache: ChunkCache | None = field(default=None, hash=False, compare=False)  # chunk reads of a remote store

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

    def child(self, rel: str) -> Location:
        """The folder `rel` below this one, on the same filesystem with the same options."""
        return Location(self.url(rel), self.storage_options, self.cache)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names directly under `rel`, sorted; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False, refresh=True)
        except (FileNotFoundError, NotADirectoryError):  # a path under a file does not exist either
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def age(self, rel: str) -> float:
        """Seconds since `rel` was last written (a file's mtime, an object's LastModified), by this machine's clock."""
        self.fs.invalidate_cache(self.path(rel))
        return time.time() - self.fs.modified(self.path(rel)).timestamp()

    # -- metadata: every read of a store's JSON and Parquet files, where damage becomes one line naming the file

    def damaged(self, rel: str, why: str) -> DamagedMetadataError:
        """`rel` is damaged because `why` ("is not JSON (...)"): names the file and the repair."""
        return DamagedMetadataError(self.url(rel), why, self.uri)

    def missing(self, rel: str, why: str = "is missing") -> MissingMetadataError:
        """`rel`, which the store lists, is not there."""
        return MissingMetadataError(self.url(rel), why, self.uri)

    def read_json(self, rel: str, keys: tuple[str, ...] = ()) -> Any:
        """A JSON file; with `keys`, an object holding at least those (what the caller goes on to read)."""
        try:
            doc = json.loads(self.read_bytes(rel).decode("utf-8"))
        except ValueError as exc:  # not UTF-8, or not JSON: a truncated or overwritten file
            raise self.damaged(rel, f"is not JSON ({exc})") from None
        if keys and not isinstance(doc, dict):
            raise self.damaged(rel, f"is not a JSON object but {type(doc).__name__}")
        missing = [k for k in keys if k not in doc]
        if missing:
            raise self.damaged(rel, f"lacks {', '.join(missing)}")
        return doc

    @contextmanager
    def parsing(self, rel: str, what: str = "Parquet") -> Iterator[None]:
        """Damage met while the block parses `rel` (bytes pyarrow cannot read, fields of the wrong shape or
        type) as a DamagedMetadataError naming it. A missing file and the filesystem's own errors pass."""
        try:
            yield
        except (pa.ArrowException, AttributeError, KeyError, TypeError, ValueError, OSError) as exc:
            filesystem = isinstance(exc, OSError) and not _undecodable(exc)
            if filesystem or isinstance(exc, (DamagedMetadataError, MemoryError)):
                raise
            reason = re.sub(r"^Could not open Parquet input source '[^']*': ", "", str(exc)).split(". ")[0]
            raise self.damaged(rel, f"cannot be read as {what} ({type(exc).__name__}: {reason})") from None

    def open_parquet(self, rel: str) -> BinaryIO:
        """`rel` opened for pyarrow, and read through `parquet_file`: a local file is Arrow's own, which its
        threads may read; a remote one can only be fsspec's, which Arrow reads in this thread (`arrow_threads`
        says why)."""
        return pa.OSFile(self.path(rel)) if self.is_local else self.fs.open(self.path(rel), "rb")

    @property
    def arrow_threads(self) -> bool:
        """Whether Arrow may read `open_parquet`'s files on its own threads (use_threads)."""
        return self.is_local

    def parquet_file(self, f: BinaryIO) -> pq.ParquetFile:
        """A ParquetFile over `open_parquet`'s `f` (the module's `parquet_file`)."""
        return parquet_file(f)

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """The table, or those of its columns it has."""
        with self.parsing(rel), self.open_parquet(rel) as f:
            return parquet_table(f, columns)

    def read_parquet_schema(self, rel: str) -> pa.Schema:
        """The schema and its metadata, from the footer alone."""
        with self.parsing(rel), self.open_parquet(rel) as f:
            return self.parquet_file(f).schema_arrow

    def partials(self, rel: str = "", older_than: float = 0.0, recursive: bool = True) -> list[str]:
        """The `*.partial` files atomic writes (ours and zarr's) left under `rel`, last written over
        `older_than` seconds ago: cut short, where no writer holds the lease. Object stores have none: a PUT
        is atomic."""
        if not self.is_local:
            return []
        found, cutoff = [], time.time() - older_than
        for folder, _, names in os.walk(self.path(rel)):
            for path in (os.path.join(folder, n) for n in names if n.endswith(".partial")):
                try:
                    if os.stat(path).st_mtime <= cutoff:
                        found.append(path)
                except FileNotFoundError:  # its writer finished meanwhile
                    pass
            if not recursive:
                break
        return found

    def remove_partials(self, rel: str = "", older_than: float = 0.0, recursive: bool = True) -> list[str]:
        """Remove `partials` (the caller holds the lease of whatever writes there); return their paths."""
        removed = []
        for path in self.partials(rel, older_than, recursive):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed

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
        with atomic_file(path, exclusive) as f:
            f.write(data)

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
        store = FsspecStore.from_url(self.url(rel), storage_options=self.storage_options, read_only=read_only)
        return self.cache.wrap(store) if self.cache is not None and read_only else store

    def ensure_writable(self, what: str = "the store") -> None:
        """Create the root and prove a file can be written there, before any work is done."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.path(), exist_ok=True)
            self.write_bytes(probe, b"")
            self.fs.rm_file(self.path(probe))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise StoreNotWritableError(f"cannot write {what} at {self.uri}: {reason}") from None

    def check_creatable(self, what: str = "the store") -> None:
        """Prove the root can be made and written, leaving nothing behind: where a local one is missing,
        a probe folder is made and removed in its nearest existing parent (a refused command creates no
        folder); a remote one gets `ensure_writable`'s probe file."""
        if not self.is_local:
            self.ensure_writable(what)
            return
        parent = self.path()
        while not os.path.isdir(parent):
            if os.path.lexists(parent):
                raise StoreNotWritableError(f"cannot write {what} at {self.uri}: {parent} is a file, not a folder")
            parent = os.path.dirname(parent)
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".vlcache-probe-", dir=parent))
        except OSError as exc:
            raise StoreNotWritableError(f"cannot write {what} at {self.uri}: {exc.strerror or exc}") from None

    @contextmanager
    def reaching(self, what: str, fix: str) -> Iterator[None]:
        """A remote filesystem's refusal for want of credentials or an endpoint, as one line saying `fix`
        (the option that gives them), instead of the client's traceback."""
        try:
            yield
        except Exception as exc:
            if self.is_local or isinstance(exc, VlcacheError) or not _unreachable(exc):
                raise
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise UnreachableError(f"cannot reach {what} at {self.uri} ({type(exc).__name__}: {reason}); "
                                   f"{fix}") from None


# -- what Arrow is given to read: every table read, the store's and the sources', goes through these


def arrow_threads(source: str | BinaryIO) -> bool:
    """Whether Arrow may read `source` on its own threads: a path, or Arrow's own file. Never a Python file
    (fsspec's): Arrow's pool threads hold it, and the bytes read from it, past the read's return and release
    them later, which takes the interpreter lock; a release once the interpreter has begun to exit aborts the
    process ("terminate called without an active exception", exit 134; docs/RELIABILITY.md has the counts;
    apache/arrow#33975, #34314)."""
    return isinstance(source, (str, pa.NativeFile))


def parquet_file(source: str | BinaryIO) -> pq.ParquetFile:
    """A ParquetFile over `source`; a Python file without pre-buffering (Arrow's I/O threads). Read it with
    use_threads=arrow_threads(source)."""
    return pq.ParquetFile(source, pre_buffer=arrow_threads(source))


def parquet_table(source: str | BinaryIO, columns: list[str] | None = None) -> pa.Table:
    """The Parquet table at `source`, or those of its columns it has; a Python file read in this thread."""
    return parquet_file(source).read(columns=columns, use_threads=arrow_threads(source))


def arrow_stream(source: str | BinaryIO) -> str | pa.NativeFile:
    """What Arrow's CSV and JSON readers may read: they read their input on Arrow's threads whatever
    use_threads says, so a Python file's bytes are first copied, in this thread, into Arrow's memory (the
    whole file: those readers hold the whole table anyway). A path is Arrow's to open."""
    if arrow_threads(source):
        return source
    sink = pa.BufferOutputStream()
    while chunk := source.read(1 << 24):
        sink.write(chunk)  # a copy: Arrow keeps no Python bytes
    return pa.BufferReader(sink.getvalue())


@contextmanager
def atomic_file(path: str, exclusive: bool = False) -> Iterator[BinaryIO]:
    """A local file written whole or not at all: the block writes a temporary sibling, which is synced,
    then renamed onto `path` (with `exclusive`, linked: StoreBusyError where `path` exists). On any error
    the temporary is removed and `path` stays as it was; a full disk is a DiskFullError naming `path`."""
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with disk_full_as_error(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())  # a disk that fills is told here at the latest, not after the rename
            if exclusive:
                try:
                    os.link(tmp, path)  # link, unlike rename, refuses to replace an existing file
                except FileExistsError:
                    raise StoreBusyError(f"{path} already exists: another writer took it first") from None
            else:
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _undecodable(exc: OSError) -> bool:
    """pyarrow's verdict on bytes that are not Parquet (a corrupt footer is a bare OSError without errno),
    as opposed to the filesystem's own errors (each with its errno)."""
    return type(exc) is OSError and exc.errno is None


def _unreachable(exc: Exception) -> bool:
    """No credentials, wrong ones, or no server at the endpoint (botocore's errors: s3fs passes them on)."""
    if isinstance(exc, (PermissionError, ConnectionError)):
        return True
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return False
    return isinstance(exc, BotoCoreError)
