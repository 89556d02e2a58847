"""Independent training runs (a head per seed, a fine-tuning per seed) side by side, one process per
share of the cores. A small model trains on two CPU threads barely faster than on one, so two runs at
once on 2 cores, one thread each, take 0.57x the time of one after the other for the demo's tflocal
(0.89x for its fine-tunings, whose larger matmuls use two threads better; bench/README.md, "The demo").
Runs return their results in the order they were asked for."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from pipeline.decoding import usable_cores

Runner = Callable[[Callable[..., Any], list[dict[str, Any]]], Iterator[Any]]


def one_after_another(fn: Callable[..., Any], calls: list[dict[str, Any]]) -> Iterator[Any]:
    """`fn(**call)` for each call, here, as the results are consumed."""
    return (fn(**call) for call in calls)


@contextmanager
def side_by_side(processes: int | None = None) -> Iterator[Runner]:
    """A `run(fn, calls)` that yields `fn(**call)` for each call in order; `processes` at a time (default:
    one per usable core), each process with torch threads for its share of the cores. One process runs
    them here, one after another, as they are consumed."""
    cores = usable_cores()
    processes = max(1, min(processes or cores, cores))
    if processes == 1:
        yield one_after_another
        return
    # spawn, not fork: this process has threads (the Dask worker, its event loop) a fork would copy mid-state
    executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=torch.set_num_threads, initargs=(max(1, cores // processes),))
    try:
        yield lambda fn, calls: (future.result() for future in [executor.submit(fn, **call) for call in calls])
    except BaseException:  # Ctrl-C or a failed run: the runs not started yet never start
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
