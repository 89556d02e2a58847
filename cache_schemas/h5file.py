"""An HDF5 file written so that a failing disk (a full one) is an error, never a crash.

HDF5 told that a write failed is left inconsistent, and h5py 3.16 (HDF5 2.0) then segfaults: closing the
file, after a traceback for each object it cannot flush, or later while it builds on what it could not
write (exit 139). So h5py writes through `Output`, a file object whose writes never fail: the first error
is kept, and from then on what HDF5 writes is kept in memory instead, so that it reads back what it wrote
and goes on consistently until the writer calls `check`, which raises the error. The file is then
deleted by the caller; nothing of it is ever used."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager

import h5py

PAGE = 1 << 16  # bytes a page of what is kept in memory holds


@contextmanager
def written(path: str) -> Iterator[tuple[h5py.File, Output]]:
    """A new HDF5 file at `path`, synced once HDF5 has closed it. A write that failed is raised then (or
    in place of what HDF5 raised after it); call the `Output`'s `check` between blocks to stop sooner."""
    output = Output(path)
    try:
        with h5py.File(output, "w") as f:
            yield f, output
    except Exception:
        output.check()  # a failed write is why HDF5 failed after it
        raise
    finally:
        output.close()
    output.check()


class Output(io.RawIOBase):
    """h5py's file object (its `fileobj` driver: seek, then read into or write a buffer). Reads past
    the end are zeros, as HDF5's own drivers give them."""

    def __init__(self, path: str):
        super().__init__()
        self.file = open(path, "r+b", buffering=0)
        self.error: OSError | None = None
        self.kept: dict[int, bytearray] = {}  # page number: its bytes, once writes go to memory
        self.position = self.end = 0

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                self.file.seek(self.position)
                rest = view
                while rest:
                    rest = rest[self.file.write(rest):]
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self._keep(self.position, view)
        self.position += len(view)
        self.end = max(self.end, self.position)
        return len(view)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if not self.kept:
            view[:] = self._disk(self.position, len(view))
        for start in range(0, len(view) if self.kept else 0, PAGE):
            at = self.position + start
            page, offset = divmod(at, PAGE)
            n = min(len(view) - start, PAGE - offset)
            view[start:start + n] = self.kept[page][offset:offset + n] if page in self.kept else self._disk(at, n)
        self.position += len(view)
        return len(view)

    def _keep(self, at: int, view: memoryview) -> None:
        while view:
            page, offset = divmod(at, PAGE)
            if page not in self.kept:
                self.kept[page] = self._disk(page * PAGE, PAGE)
            n = min(len(view), PAGE - offset)
            self.kept[page][offset:offset + n] = view[:n]
            at, view = at + n, view[n:]

    def _disk(self, at: int, n: int) -> bytearray:
        self.file.seek(at)
        return bytearray((self.file.read(n) or b"").ljust(n, b"\0"))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = offset + {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.end}[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def truncate(self, size: int | None = None) -> int:
        self.end = self.position if size is None else size
        if self.error is None:
            try:
                self.file.truncate(self.end)
            except OSError as exc:
                self.error = exc
        return self.end

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            if self.error is None:
                try:
                    os.fsync(self.file.fileno())  # where a filling disk is told last
                except OSError as exc:
                    self.error = exc
            super().close()
            self.file.close()
            self.kept.clear()
