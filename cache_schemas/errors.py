"""Typed errors. Each is also a builtin (FileNotFoundError, ValueError, KeyError) so callers
can catch what they already know; every one is a `VlcacheError`, which the CLI prints as one line."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager


class VlcacheError(Exception):
    """A problem the user can fix: shown as a one-line message, never a traceback."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else self.__class__.__name__


class StoreNotFoundError(VlcacheError, FileNotFoundError):
    """No vlcache store at the given URI."""


class StoreNotWritableError(VlcacheError, PermissionError):
    """The store location cannot be created or written."""


class SchemaVersionError(VlcacheError, ValueError):
    """The store was written with a schema this version of vlcache cannot read."""


class UnknownSpaceError(VlcacheError, KeyError):
    """No embedding space with that key (or encoder) in the store."""


class UnknownDatasetError(VlcacheError, KeyError):
    """No dataset with that name in the store."""


class DatasetConflictError(VlcacheError, ValueError):
    """A dataset of that name exists with different content."""


class StoreBusyError(VlcacheError, RuntimeError):
    """Another extraction is writing the same embedding space."""


class InvalidSourceError(VlcacheError, ValueError):
    """A source (file, folder, table) cannot be read as the declared format."""


class InvalidSpecError(VlcacheError, ValueError):
    """A spec, manifest or table does not follow the schema."""


class DamagedStoreError(VlcacheError, OSError):
    """Committed rows that read back missing, undecodable or non-finite: the store is damaged."""


class DamagedMetadataError(DamagedStoreError):
    """A store's metadata file (JSON or Parquet) missing, unparseable or of the wrong shape: names the file
    (`path`), what is wrong with it (`why`) and the commands that list and repair the damage."""

    def __init__(self, path: str, why: str, store: str):
        self.path, self.why, self.store = path, why, store
        super().__init__(f"{path} {why}; run vlcache cache verify {store} to list the damage, then vlcache cache "
                         f"repair {store}")

    def __reduce__(self):  # raised in Dask workers too: pickled by its three fields, not its message
        return type(self), (self.path, self.why, self.store)


class MissingMetadataError(DamagedMetadataError, FileNotFoundError):
    """A metadata file the store lists (in a manifest, an index) that is not there."""


class ExportFileError(VlcacheError, ValueError):
    """An export that cannot be written, or a file that cannot be read as a vlcache export."""


class UnreachableError(VlcacheError, ConnectionError):
    """A remote filesystem refused us for want of credentials or an endpoint (the message names the option)."""


class DiskFullError(VlcacheError, OSError):
    """No space left (or over quota) where an output is written: the message names the output."""


# How a full disk reads where a library keeps only the text: h5py's RuntimeError ("errno = 28, error message
# = 'No space left on device'"), pyarrow's OSError ("[errno 28] No space left on device").
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = re.compile("|".join(re.escape(os.strerror(code)) for code in _DISK_FULL))
RERUN = "free some space and run the same command again"
RESUME = "committed shards are kept; free some space, then run the same command again to resume"


def says_disk_full(text: str) -> bool:
    return bool(_DISK_FULL_TEXT.search(text))


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC or EDQUOT: raised as it is, behind another error (torch's save raises a RuntimeError while
    handling the OSError), or only in an error's text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in _DISK_FULL):
            return True
        if isinstance(exc, (OSError, RuntimeError)) and says_disk_full(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def disk_full_as_error(what: str, then: str = RERUN) -> Iterator[None]:
    """A full disk met in the block, as one DiskFullError naming `what` (the output the command was
    writing) and saying `then`; every other error passes. Nested, the outermost names the output: the
    one the user gave, not the file inside it that met the full disk."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full(what, then) from None


def disk_full(what: str, then: str = RERUN) -> DiskFullError:
    return DiskFullError(f"the disk is full: no space left on the device to write {what}; {then}")


def resume_command(resumed: bool, seed_given: bool = False) -> str:
    """The command that continues a run folder's run from its last save: the same one with --resume, less
    a --seed (which a resumed run refuses); the same one again where it had --resume already."""
    if resumed:
        return "the same command again"
    return "the same command with --resume" + (" and without --seed" if seed_given else "")


def after_full_disk(out: str, saved: str | None, resumed: bool, seed_given: bool = False) -> str:
    """How a run folder's command stopped by a full disk goes on: before its first save (`saved` None),
    the same command again, which starts the run over; after it, `resume_command` from what `saved` names."""
    if saved is None:
        return RERUN
    return (f"{out} keeps {saved}: free some space, then run {resume_command(resumed, seed_given)} to continue "
            "from it")
