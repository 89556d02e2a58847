"""Writer leases: one writer at a time per embedding space, and one at a time for dataset registration.

A lease is a numbered file, `locks/<name>/<n>.json`, created exclusively (a hard link on a local
disk, a conditional PUT `If-None-Match: *` on object stores): of two writers that try to take the
next number, exactly one succeeds. The holder renews its expiry while it works and marks the file
released when it is done. A lease whose holder stopped renewing (SIGKILL, a lost node) expires after
`ttl` seconds; on the holder's own host, a lease whose process is gone is taken over at once, so a
rerun after a crash never waits. A record that cannot be read (garbage, cut short) holds the lease while
younger than `ttl` and frees it once older, so damage never stops every writer for ever."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import DamagedMetadataError, StoreBusyError
from .location import Location

TTL = 60.0  # seconds a lease stays valid without renewal
WAIT = 3600.0  # seconds a writer waits for a busy lease before it gives up
POLL = 0.5
RECORD = {"purpose": str, "host": str, "pid": int, "acquired": (int, float), "expires": (int, float)}  # what is read


@contextmanager
def hold(location: Location, name: str, purpose: str, *, wait: float = WAIT, ttl: float = TTL,
         on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold lease `name` for the block: wait (up to `wait` s) while another live writer holds it,
    renew it in the background, release it on the way out (also on error or Ctrl-C)."""
    lease = _acquire(location, name, purpose, wait, ttl, on_wait)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_until, args=(lease, stop), daemon=True, name=f"lease-{name}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        lease.release()


def _holder(purpose: str, ttl: float) -> dict[str, Any]:
    now = time.time()
    return {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
            "acquired": now, "expires": now + ttl, "ttl": ttl, "released": False}


class _Lease:
    def __init__(self, location: Location, rel: str, record: dict[str, Any]):
        self.location, self.rel, self.record = location, rel, record

    def write(self, released: bool = False) -> None:
        self.record.update(expires=time.time() + self.record["ttl"], released=released)
        self.location.write_json(self.rel, self.record)

    def release(self) -> None:
        """Mark the lease released; where that cannot be written (a full disk, a lost connection), remove
        it, which frees it as well: the lease before it is free. Failing both, it is left to expire (at once
        on this host once this process ends; elsewhere after `ttl`). Never raises: on the way out of an
        error, that error is the one to report, and the work the lease guarded is done or abandoned."""
        try:
            self.write(released=True)
        except OSError:
            try:
                self.location.remove(self.rel)
            except OSError:
                pass


def _acquire(location: Location, name: str, purpose: str, wait: float, ttl: float,
             on_wait: Callable[[str], None] | None) -> _Lease:
    folder = f"locks/{name}"
    deadline = time.monotonic() + wait
    told = False
    while True:
        numbers = [int(n[:-5]) for n in location.listdir(folder) if n.endswith(".json") and n[:-5].isdigit()]
        last = max(numbers, default=-1)
        try:
            held_by = _held_by(location, f"{folder}/{last}.json", ttl) if last >= 0 else None
        except FileNotFoundError:  # pruned between the listing and the read: look again
            continue
        if held_by is None:
            record = _holder(purpose, ttl)
            rel = f"{folder}/{last + 1}.json"
            try:
                location.write_json(rel, record, exclusive=True)
            except StoreBusyError:
                continue  # another writer took this number first: look again
            _prune(location, folder, keep_from=last)
            return _Lease(location, rel, record)
        if time.monotonic() > deadline:
            raise StoreBusyError(f"{name} in {location.uri} is held by {held_by}; gave up after waiting {wait:.0f}s")
        if on_wait and not told:
            on_wait(f"waiting for {name}: held by {held_by}")
            told = True
        time.sleep(POLL)


def _held_by(location: Location, rel: str, ttl: float) -> str | None:
    """Who holds the lease whose newest record is `rel`, or None where it is free. An unreadable record
    holds it while younger than `ttl` (as a live holder's would) and frees it once older."""
    try:
        record = _read(location, rel)
    except DamagedMetadataError as exc:
        age = location.age(rel)
        if age > ttl:
            return None
        return f"an unreadable lease record, {exc.path} ({exc.why}), written {age:.0f}s ago (free once {ttl:.0f}s old)"
    return _describe(record) if _alive(record) else None


def _read(location: Location, rel: str) -> dict[str, Any]:
    """A lease record; DamagedMetadataError where it is not one (not JSON, fields missing or of the wrong type)."""
    record = location.read_json(rel, keys=tuple(RECORD))
    wrong = [key for key, kind in RECORD.items() if not isinstance(record[key], kind) or isinstance(record[key], bool)]
    if wrong:
        raise location.damaged(rel, f"holds {', '.join(wrong)} of the wrong type")
    return record


def damaged_records(location: Location, name: str, older_than: float = TTL) -> dict[str, DamagedMetadataError]:
    """The records of lease `name` that cannot be read, last written over `older_than` s ago, by path in the
    store: what `verify` lists and `repair` removes (holding the lease, whose own record supersedes them)."""
    found = {}
    for rel in (f"locks/{name}/{file}" for file in location.listdir(f"locks/{name}") if file.endswith(".json")):
        try:
            try:
                _read(location, rel)
            except DamagedMetadataError as exc:
                if location.age(rel) > older_than:
                    found[rel] = exc
        except FileNotFoundError:  # pruned meanwhile
            pass
    return found


def _alive(record: dict[str, Any]) -> bool:
    if record.get("released") or time.time() > record["expires"]:
        return False
    if record["host"] == socket.gethostname():
        try:
            os.kill(record["pid"], 0)
        except (ProcessLookupError, OverflowError):  # no such process, or no pid a process can have
            return False
        except PermissionError:  # someone else's process: alive
            pass
    return True


def _renew_until(lease: _Lease, stop: threading.Event) -> None:
    while not stop.wait(lease.record["ttl"] / 4):
        try:
            lease.write()
        except OSError:  # a transient store error: the next renewal, well before expiry, tries again
            pass


def _prune(location: Location, folder: str, keep_from: int) -> None:
    """Forget leases older than the one just superseded: they can never matter again."""
    for name in location.listdir(folder):
        number = name.split(".")[0]
        if number.isdigit() and int(number) < keep_from:
            location.remove(f"{folder}/{name}")


def _describe(record: dict[str, Any]) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(record["acquired"]))
    return f"{record['purpose']} (pid {record['pid']} on {record['host']}, since {since})"
