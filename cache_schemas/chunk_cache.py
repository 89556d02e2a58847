"""A local cache of a remote store's chunk files: each is read over the network once per machine, then
from a local folder held under a size bound (least recently used files go first), as LitData and Mosaic
streaming keep their shards.

Only Zarr chunk files are cached: a committed shard is written whole once and never rewritten in place.
Metadata (`zarr.json`, manifests, plans, the index, parts) is always read from the store. A chunk path can
hold new bytes after `cache gc --collect` frees its shard number, so an entry is named by the file's path
*and* its version (the ETag, or size and modification time, from one listing per array and reader): new
bytes under an old name are a miss, never stale data.

Why not a library's cache: fsspec's `simplecache`/`filecache` (2026.9) download straight into the final
file name, so a second process (or a killed download) can read a truncated file (fsspec#639, fixed after
that release), keep no size bound, and would cache the mutable metadata too; zarr's experimental
`CacheStore` keeps byte-range reads (every read of a sharded array) in memory only, with LRU bookkeeping
per process. This wraps zarr's `WrapperStore` (the store interface zarr reads through) instead: files are
published by `os.replace` (a reader sees a whole file or none), and eviction runs under an `flock` of the
folder, so processes on one machine share it safely and together never exceed the bound."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, WrapperStore

DEFAULT_MAX_BYTES = 20 * 10**9
CHUNK_KEY = re.compile(r"(?P<array>.+?)/c/.+")  # zarr v3's default chunk key encoding: <array>/c/<i>/<j>/...
# What names a version of a file, by filesystem: s3fs, gcsfs, adlfs/http, then any that gives a date.
VERSION_FIELDS = ("ETag", "md5Hash", "etag", "generation", "LastModified", "last_modified", "mtime", "updated")


@dataclass(frozen=True)
class ChunkCache:
    """A cache folder (`chunks/`, a lock file) and the most bytes its chunk files may take."""

    folder: str
    max_bytes: int = DEFAULT_MAX_BYTES

    def wrap(self, store: FsspecStore) -> CachedStore:
        return CachedStore(store, self)

    def size(self) -> int:
        """Bytes held by cached files."""
        return sum(size for _, size, _ in self.entries())

    def read(self, name: str, byte_range: ByteRequest | None) -> bytes | None:
        """The cached file's bytes (or a range of them), or None on a miss; a hit counts as a use."""
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                data = read_range(f, byte_range)
        except FileNotFoundError:  # never cached, or evicted by another process
            return None
        try:
            os.utime(path)  # least recently *used*: the eviction order
        except FileNotFoundError:
            pass
        return data

    def publish(self, name: str, data: bytes) -> None:
        """Keep `data` under `name`, evicting the least recently used files first so that the folder never
        holds more than `max_bytes`. A file larger than the bound is not kept."""
        if len(data) > self.max_bytes:
            return
        path = self._path(name)
        with self._locked():
            held = sorted(self.entries(clean=True))  # oldest use first
            total = sum(size for _, size, _ in held)
            for _, size, old in held:
                if total + len(data) <= self.max_bytes:
                    break
                _unlink(old)
                total -= size
            os.makedirs(os.path.dirname(path), exist_ok=True)
            partial = f"{path}.{uuid.uuid4().hex}.partial"
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, path)  # readers see the whole file or none

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, "chunks", name[:2], name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One publisher at a time on this machine (an advisory lock, released when the process dies)."""
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def entries(self, clean: bool = False) -> list[tuple[float, int, str]]:
        """(last use, size, path) of every cached file. With `clean` (only under the lock, where no one
        else is writing), `.partial` files are what dead processes left: removed."""
        entries = []
        for path in _files(os.path.join(self.folder, "chunks")):
            if path.endswith(".partial"):
                if clean:
                    _unlink(path)
                continue
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        return entries


class CachedStore(WrapperStore[FsspecStore]):
    """A remote Zarr store read through a ChunkCache: chunk files whole, once, then from the folder;
    everything else straight from the store."""

    def __init__(self, store: FsspecStore, cache: ChunkCache):
        super().__init__(store)
        self._cache = cache
        self._versions: dict[str, dict[str, tuple[str, int]]] = {}  # per array: key -> (version, size), listed once
        self._names: dict[str, str | None] = {}  # chunk key -> its entry's name (None: not cached)

    def _with_store(self, store: FsspecStore) -> CachedStore:
        return type(self)(store, self._cache)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
                  ) -> Buffer | None:
        name = await self._entry_name(key)
        if name is None:  # metadata, or a file the listing did not show (written since): uncached
            return await self._store.get(key, prototype, byte_range)
        data = self._cache.read(name, byte_range)  # a local read: cheaper inline than a thread hop
        if data is None:
            whole = await self._store.get(key, prototype)  # the whole file: one GET, then local reads
            if whole is None:
                return None
            raw = whole.to_bytes()
            await asyncio.to_thread(self._cache.publish, name, raw)
            data = read_range(io.BytesIO(raw), byte_range)
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, r) for key, r in key_ranges)))

    async def _entry_name(self, key: str) -> str | None:
        if key not in self._names:
            self._names[key] = await self._name(key)
        return self._names[key]

    async def _name(self, key: str) -> str | None:
        match = CHUNK_KEY.fullmatch(key)
        if match is None:
            return None
        array = match["array"]
        if array not in self._versions:
            self._versions[array] = await self._list_versions(array)
        version, size = self._versions[array].get(key, (None, 0))
        if version is None or size > self._cache.max_bytes:  # a file the bound cannot hold: read ranges of it
            return None
        url = self._store.fs.unstrip_protocol(f"{self._store.path}/{key}")
        return hashlib.sha256(f"{url}\0{size}:{version}".encode()).hexdigest()

    async def _list_versions(self, array: str) -> dict[str, tuple[str, int]]:
        """Every chunk file of `array` with its version and size, from one (paged) listing."""
        root = f"{self._store.path}/{array}/c"
        try:
            found = await self._store.fs._find(root, detail=True)
        except FileNotFoundError:
            return {}
        versions = {}
        for path, info in found.items():
            version = next((str(info[f]) for f in VERSION_FIELDS if info.get(f) is not None), None)
            if version is not None and info.get("type", "file") == "file":
                versions[f"{array}/c/{path[len(root) + 1:]}"] = (version, int(info.get("size") or 0))
        return versions


def read_range(f: BinaryIO, byte_range: ByteRequest | None) -> bytes:
    """What zarr's byte request asks of a file."""
    if byte_range is None:
        return f.read()
    if isinstance(byte_range, RangeByteRequest):
        f.seek(byte_range.start)
        return f.read(byte_range.end - byte_range.start)
    if isinstance(byte_range, OffsetByteRequest):
        f.seek(byte_range.offset)
        return f.read()
    if isinstance(byte_range, SuffixByteRequest):
        size = f.seek(0, io.SEEK_END)
        f.seek(max(0, size - byte_range.suffix))
        return f.read()
    raise TypeError(f"unexpected byte request {byte_range!r}")


def parse_size(text: str) -> int:
    """Bytes from '20GB', '500 MB', '1.5GiB' or a plain count; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", str(text), flags=re.IGNORECASE)
    unit = match[2].lower().rstrip("b") if match else None
    if unit not in ("", "k", "m", "g", "t", "ki", "mi", "gi", "ti"):
        raise ValueError(f"{text!r} is not a size: a number of bytes, or with a unit (500MB, 20GB, 1.5GiB)")
    power = "kmgt".find(unit[:1]) + 1 if unit else 0
    return int(float(match[1]) * (1024 if unit.endswith("i") else 1000) ** power)


def _files(root: str) -> Iterator[str]:
    try:
        with os.scandir(root) as fans:
            for fan in fans:
                if fan.is_dir():
                    with os.scandir(fan.path) as entries:
                        yield from (e.path for e in entries if e.is_file())
    except FileNotFoundError:
        return


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
