"""A source's filesystem: every file a reader or a worker opens (a table, a tar shard, an image, a
sidecar), local or remote (s3://, gs://, a chained tar://member::s3://shard.tar), opened with the
fsspec options `--source-options` gives for it.

Those options may hold a secret. They live in memory only: they travel to Dask workers and decode
processes as task arguments (`SourceOptions`, whose repr never shows them) and are written nowhere: not
in the store, a plan, a summary or a log. The source's filesystem refusing us (no credentials, no server
at the endpoint, access denied) is one line naming `--source-options`; a filesystem whose package is
missing (s3fs) is one line naming it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from cache_schemas import Location, VlcacheError

FIX = "pass --source-options with the endpoint_url, key and secret that reach it (JSON or @FILE.json)"
FETCHES = 16  # small files read at once: an object store answers each in tens of milliseconds
INSTALL = {"s3": "pip install s3fs, or vlcache's s3 extra: pip install 'vlcache[s3]'"}


class SourceOptions:
    """fsspec options for the filesystem a source's files are on (`--source-options`), and the file
    operations readers and workers use with them. Equal (and hashable) by value, so caches of opened
    tables can be keyed by them."""

    __slots__ = ("options", "_key")

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = dict(options or {})
        self._key = json.dumps(self.options, sort_keys=True, default=repr)

    def __repr__(self) -> str:  # Dask logs a failed task's arguments: the values never appear
        return f"SourceOptions({len(self.options)} options, not shown)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceOptions) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __reduce__(self):
        return SourceOptions, (self.options,)

    def kwargs(self, url: str) -> dict[str, Any]:
        """fsspec's keyword arguments giving the options to the filesystem `url`'s bytes are on: the last
        of a chained URL (tar://member::s3://shard.tar), never a local one."""
        protocol = split_protocol(url.rsplit("::", 1)[-1])[0]
        return {protocol: dict(self.options)} if self.options and protocol not in (None, "file", "local") else {}

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        with reaching(url):
            return fsspec.core.url_to_fs(url, **self.kwargs(url))

    @contextmanager
    def open(self, url: str) -> Iterator[IO[bytes]]:
        """`url` open for reading; the filesystem's refusals, at opening or reading, as one line."""
        with reaching(url), fsspec.open(url, "rb", **self.kwargs(url)) as f:
            yield f

    @contextmanager
    def input(self, path: str) -> Iterator[str | IO[bytes]]:
        """What pyarrow reads: a local path as it is (memory-mapped where pyarrow can), else the open file."""
        if "://" not in path:
            yield path
            return
        with self.open(path) as f:
            yield f

    def read(self, url: str) -> bytes:
        with self.open(url) as f:
            return f.read()

    def read_many(self, urls: list[str]) -> dict[str, bytes]:
        """The files of `urls` that can be read, fetched together (on an object store, concurrently). One
        that cannot is left out; the filesystem refusing us is one line all the same."""
        def one(url: str) -> bytes | None:
            fs, path = self.fs(url)
            try:
                with reaching(url):
                    return fs.cat_file(path)
            except VlcacheError:
                raise
            except (OSError, ValueError):
                return None
        with ThreadPoolExecutor(FETCHES) as pool:
            return {url: data for url, data in zip(urls, pool.map(one, urls)) if data is not None}

    def isfile(self, url: str) -> bool:
        fs, path = self.fs(url)
        with reaching(url):
            return fs.isfile(path)

    def isdir(self, url: str) -> bool:
        fs, path = self.fs(url)
        with reaching(url):
            return fs.isdir(path)

    def info(self, url: str) -> dict[str, Any]:
        fs, path = self.fs(url)
        with reaching(url):
            return fs.info(path)

    def names(self, url: str) -> list[str]:
        """The names of the entries directly in the folder `url`, sorted."""
        fs, path = self.fs(url)
        with reaching(url):
            return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))

    def glob(self, pattern: str) -> list[str]:
        """The files (not folders) a glob matches, sorted, named as `pattern` names files."""
        fs, path = self.fs(pattern)
        with reaching(pattern):
            found = fs.glob(path, detail=True)
        return [_named(fs, p) for p, info in sorted(found.items()) if info.get("type") == "file"]

    def files_under(self, url: str, hidden: bool = True) -> list[str]:
        """Every file below the folder `url`, in os.walk's sorted order (a folder's files, then its
        sub-folders'); without those in hidden folders (.git, .cache) unless `hidden`."""
        fs, root = self.fs(url)
        with reaching(url):
            found = fs.find(root)
        root = root.rstrip("/")
        relative = [p[len(root) + 1:].split("/") for p in found if p.startswith(root + "/")]
        if not hidden:
            relative = [parts for parts in relative if not any(d.startswith(".") for d in parts[:-1])]
        relative.sort(key=lambda parts: [(1, d) for d in parts[:-1]] + [(0, parts[-1])])
        return [_named(fs, f"{root}/{'/'.join(parts)}") for parts in relative]


NO_OPTIONS = SourceOptions()


def absolute(path: str) -> str:
    """A local path made absolute; a URL as it is."""
    return path if "://" in path else os.path.abspath(path)


def _named(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """The source's filesystem refusing us (no credentials, no server at the endpoint, access denied)
    as one line naming --source-options, and a missing filesystem package as one line naming it."""
    target = url.rsplit("::", 1)[-1]  # a chained URL's bytes are on its last filesystem
    try:
        with Location(target).reaching("the source", FIX):
            yield
    except ImportError as exc:
        protocol = split_protocol(target)[0]
        if protocol in (None, "file", "local"):
            raise
        raise VlcacheError(f"cannot read {target}: {exc} ({INSTALL.get(protocol, 'install its fsspec package')})"
                           ) from None
