"""Where a command's output goes (`--out`: a run or report folder), and where a run is read back from
(`--checkpoint`): a local folder, or any fsspec URL.

Options: a folder on the store's kind of filesystem (s3:// beside an s3:// store) uses the store's
`--storage-options`, so one endpoint and one set of credentials serve both; a folder on another
filesystem uses that filesystem's own settings (for S3: the AWS_* variables or ~/.aws).

Files that other libraries write in one go (reports, figures) are written to a staging folder (beside a
local folder, on its filesystem; a temporary one for a remote folder) and moved or uploaded when the command
succeeds, each file one atomic write: a failed command (a full disk too) leaves nothing there.
A training run writes its checkpoints and log through the folder's `Location` as it goes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from fsspec.core import split_protocol

from .errors import disk_full_as_error
from .location import Location

SHARED = "it is on the store's filesystem, so it uses --storage-options: pass the ones that reach it"
OWN = ("it uses its filesystem's own settings (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL); "
       "--storage-options reach only a folder on the store's filesystem")


def run_location(path: str, store_uri: str | None = None, storage_options: dict[str, Any] | None = None
                 ) -> Location:
    """The folder at `path`, with the store's options where it shares the store's filesystem (no I/O)."""
    return Location(str(path), dict(storage_options or {}) if _shares(path, store_uri) else {})


def run_folder(path: str, store_uri: str | None = None, storage_options: dict[str, Any] | None = None, *,
               what: str = "--out", write: bool = False) -> Location:
    """`run_location`, and a remote one reached at once (with `write`, a file written and removed), so
    missing credentials or an endpoint are one line naming `what` before any work is done. A local one is
    left untouched (a refused command creates no folder); with `write`, it is checked to be creatable."""
    location = run_location(path, store_uri, storage_options)
    if location.is_local and write:
        location.check_creatable(what)
    if not location.is_local:
        with location.reaching(what, SHARED if _shares(path, store_uri) else OWN):
            if write:
                location.ensure_writable(what)
            else:
                location.fs.exists(location.path())
    return location


@contextmanager
def staged(location: Location) -> Iterator[str]:
    """A local folder to write `location`'s files in, published when the block ends without error: all of
    them, or none (a full disk is then one line naming `location`). Locally it is `.NAME.partial` beside
    the folder (on its filesystem: the files are renamed into place; one a killed run left is removed
    here); remotely a temporary folder, uploaded file by file. Either is removed whatever happens, as are
    the folders made to hold it when nothing is published."""
    with disk_full_as_error(location.uri):
        made = _first_missing(os.path.dirname(os.path.abspath(location.path()))) if location.is_local else None
        local = _staging(location.path()) if location.is_local else tempfile.mkdtemp(prefix="vlcache-out-")
        try:
            yield local
            for path in sorted(_files(local)):
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                if location.is_local:
                    os.makedirs(os.path.dirname(location.path(rel)), exist_ok=True)
                    os.replace(path, location.path(rel))
                else:
                    with open(path, "rb") as f:
                        location.write_bytes(rel, f.read())
            made = None  # they hold the output now
        finally:
            shutil.rmtree(local, ignore_errors=True)
            if made:
                _remove_empty(made)


@contextmanager
def no_empty_folder_left(location: Location) -> Iterator[None]:
    """The block, which may make the local folder `location` (and its missing parents): where it fails,
    those it made are removed again where they hold no file, so a run that saved nothing leaves no
    empty run folder."""
    made = _first_missing(os.path.abspath(location.path())) if location.is_local else None
    try:
        yield
    except BaseException:
        if made:
            _remove_empty(made)
        raise


def _staging(folder: str) -> str:
    parent, name = os.path.split(os.path.abspath(folder))
    staging = os.path.join(parent, f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def _first_missing(folder: str) -> str | None:
    """The outermost of `folder` and its parents that does not exist (what making `folder` creates), or None."""
    missing = None
    while not os.path.isdir(folder):
        missing, folder = folder, os.path.dirname(folder)
    return missing


def _remove_empty(top: str) -> None:
    """`top` and the folders under it, where they hold no file."""
    for folder, _, _ in os.walk(top, topdown=False):
        with suppress(OSError):
            os.rmdir(folder)


def _files(root: str) -> Iterator[str]:
    for folder, _, names in os.walk(root):
        yield from (os.path.join(folder, name) for name in names)


def published(location: Location, local: str, path: str) -> str:
    """Where the file `path`, written in `staged(location)`'s folder `local`, is (or will be) found: for a
    local folder, as the user wrote it."""
    rel = os.path.relpath(path, local)
    return os.path.join(location.uri, rel) if location.is_local else location.url(rel.replace(os.sep, "/"))


def _shares(path: str, store_uri: str | None) -> bool:
    """On the store's kind of filesystem (s3 and s3, two local paths)."""
    protocol = lambda p: split_protocol(str(p))[0] or "file"  # noqa: E731
    return store_uri is not None and protocol(path) == protocol(store_uri)
