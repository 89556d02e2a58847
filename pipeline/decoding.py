"""Where a worker decodes images: threads of the worker, or processes forked from a fork server.

Imports neither torch nor an encoder. The fork server preloads this module and the encoder's image
steps (pipeline/preprocess.py for open_clip's), so decode processes start in a fraction of a second
instead of each importing torch, and no decoding holds the interpreter lock the thread launching a
GPU's kernels needs."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from functools import cache
from typing import Any

from .images import ImageError, decode, read_bytes
from .readers.remote import NO_OPTIONS, SourceOptions


def usable_cores() -> int:
    """The cores this process may run on: a SLURM job's or a container's share, not the machine's. A
    SLURM that does not bind tasks to cores leaves the affinity open; the job's booking counts then."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    booked = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(booked)) if booked.isdigit() and int(booked) > 0 else cores


# PIL releases the GIL while decoding and resizing, so threads overlap decode with encoding; a GPU
# encodes faster than a few cores decode, so every core gets one.
DECODE_THREADS = min(32, max(4, usable_cores()))

# A batch's (uris, expected hashes) -> futures of its images in order, each future a list of pixels
# (or the ImageError that says why there are none) for a run of consecutive images.
Decode = Callable[[list[str], list[str]], list[Future]]

# Each process task costs the worker a future, a trip through the pool's queues and a pickle: at one
# image a task, about 2.5x the worker's CPU per image of eight a task (bench/decode_bench.py).
MAX_IMAGES_PER_TASK = 8


def thread_decoder(preprocess: Callable, size: int, source_options: SourceOptions = NO_OPTIONS) -> Decode:
    """Decoding in the worker's own threads, one image a task; pixels come back as `preprocess` makes them."""
    load_all = functools.partial(_load_all, preprocess, size, source_options)
    return lambda uris, hashes: _submit(_thread_pool(), load_all, 1, uris, hashes)


def process_decoder(key: Any, processes: int, preprocess: Callable, size: int,
                    images_per_task: int | None = None, source_options: SourceOptions = NO_OPTIONS) -> Decode:
    """Decoding in `processes` processes, one pool per worker process and `key` (its space), kept
    across shards; `images_per_task` by default as _task_size says. `preprocess` must be picklable;
    pixels come back as it makes them (a numpy array is cheapest to send), an error as its (stage, message).
    `source_options` go with each task (in memory, through the pool's pipe), so a pool serves any source."""
    with _PROCESS_POOLS_LOCK:  # a worker's threads share it
        if (key, processes) not in _PROCESS_POOLS:
            _close_process_pools()
            _PROCESS_POOLS[key, processes] = _start_process_pool(processes, preprocess, size)
        pool = _PROCESS_POOLS[key, processes]

    def decode(uris: list[str], hashes: list[str]) -> list[Future]:
        per_task = images_per_task or _task_size(len(uris), processes)
        return _submit(pool, functools.partial(_load_all_here, source_options), per_task, uris, hashes)
    return decode


def _task_size(batch: int, processes: int) -> int:
    """Up to MAX_IMAGES_PER_TASK, while a batch still gives every process four tasks: its last tasks
    then keep no process idle for long."""
    return max(1, min(MAX_IMAGES_PER_TASK, batch // (4 * processes)))


def close_process_pools() -> None:
    """After a decode process died (killed, out of memory): the next shard starts a new pool."""
    with _PROCESS_POOLS_LOCK:
        _close_process_pools()


def _submit(pool, load_all: Callable, per_task: int, uris: list[str], hashes: list[str]) -> list[Future]:
    return [pool.submit(load_all, uris[i:i + per_task], hashes[i:i + per_task]) for i in range(0, len(uris), per_task)]


def _load_all(preprocess: Callable, size: int, source_options: SourceOptions, uris: list[str],
              hashes: list[str]) -> list:
    return [load(preprocess, size, uri, expected, source_options) for uri, expected in zip(uris, hashes)]


def load(preprocess: Callable, size: int, uri: str, expected_hash: str,
         source_options: SourceOptions = NO_OPTIONS) -> Any:
    """One image's pixels, or the ImageError that says why there are none."""
    try:
        data = read_bytes(uri, source_options)
        if hashlib.sha256(data).hexdigest() != expected_hash:
            raise ImageError("read", "file changed since it was hashed; rerun extract to pick up the new content")
        image = decode(data, size)
        try:
            return preprocess(image)
        except ValueError as exc:  # steps that scale an edge to nothing (a one-pixel strip, padded to fit)
            raise ImageError("decode", f"cannot preprocess a {image.width}x{image.height} image: {exc}") from None
    except ImageError as exc:
        return exc


@cache
def _thread_pool() -> ThreadPoolExecutor:
    """One pool per worker process, kept across shards."""
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="vlcache-decode")


_PROCESS_POOLS: dict[tuple, ProcessPoolExecutor] = {}
_PROCESS_POOLS_LOCK = threading.Lock()


def _start_process_pool(processes: int, preprocess: Callable, size: int) -> ProcessPoolExecutor:
    # Forking this process, threads and all, could deadlock: processes fork from a fork server that
    # imports this module and the steps' own, nothing of the worker's.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, type(preprocess).__module__])
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_start_decoding,
                               initargs=(preprocess, size))
    for _ in range(processes):  # every process starts now, not one by one as the first batch arrives
        pool.submit(os.getpid)
    return pool


def _close_process_pools() -> None:
    for pool in _PROCESS_POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _PROCESS_POOLS.clear()


_PROCESS_LOAD: list[Callable] = []  # in a decode process: its load, set once by _start_decoding


def _start_decoding(preprocess: Callable, size: int) -> None:
    _PROCESS_LOAD.append(functools.partial(load, preprocess, size))


def _load_all_here(source_options: SourceOptions, uris: list[str], hashes: list[str]) -> list:
    loaded = [_PROCESS_LOAD[0](uri, expected, source_options) for uri, expected in zip(uris, hashes)]
    return [(x.stage, str(x)) if isinstance(x, ImageError) else x for x in loaded]
