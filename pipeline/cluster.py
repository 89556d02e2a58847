"""Where the encoder pass runs: a LocalCluster on this machine (the default), an existing Dask
scheduler, or SLURM jobs through dask-jobqueue (configured by dask's `jobqueue.slurm` settings,
e.g. ~/.config/dask/jobqueue.yaml; see workflows/recipes/jobqueue.yaml)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from distributed import Client, LocalCluster

from cache_schemas import VlcacheError


@dataclass(frozen=True)
class ClusterConfig:
    scheduler_address: str | None = None
    slurm_jobs: int = 0
    workers: int = 1
    threads_per_worker: int = 1
    processes: bool = True  # False runs workers as threads of this process (fast start, for tests)

    @property
    def kind(self) -> str:
        return "scheduler" if self.scheduler_address else "slurm" if self.slurm_jobs else "local"

    def torch_threads(self) -> int | None:
        """CPU threads each local worker's torch may use, so workers share the cores instead of fighting
        (Dask sets OMP_NUM_THREADS=1 in its workers). Remote workers keep their own settings."""
        if self.kind != "local":
            return None
        return max(1, (os.cpu_count() or 1) // (self.workers * self.threads_per_worker))


class _SyncCancelRace(logging.Filter):
    """Drops one harmless traceback. When Ctrl-C lands before a `distributed.utils.sync` coroutine has
    started, sync's cancel callback reads its `future` before it is bound (distributed 2026.8), and
    tornado logs the NameError; there was nothing to cancel yet."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError) and "'future'" in str(error))


logging.getLogger("tornado.application").addFilter(_SyncCancelRace())


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Ctrl-C reaches every process of the terminal's group. Worker processes inherit an ignored
    SIGINT, so only the driver reacts: it stops the cluster, and no worker prints a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def dask_client(config: ClusterConfig) -> Iterator[Client]:
    if config.scheduler_address:
        try:
            client = Client(config.scheduler_address, timeout="20s")
        except OSError as exc:
            raise VlcacheError(f"cannot reach the Dask scheduler at {config.scheduler_address}: {exc}") from None
        with client:
            yield client
        return
    if config.slurm_jobs:
        if shutil.which("sbatch") is None:
            raise VlcacheError("--slurm-jobs needs SLURM's sbatch on this machine's PATH; run where jobs can be "
                               "submitted, or use --scheduler-address or local --workers")
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster()  # cores, memory, queue, walltime... from dask config jobqueue.slurm
        cluster.scale(jobs=config.slurm_jobs)
    else:
        with _workers_ignore_ctrl_c():
            # Dashboard on a free port (None still means :8787, which another cluster may hold).
            cluster = LocalCluster(n_workers=config.workers, threads_per_worker=config.threads_per_worker,
                                   processes=config.processes, dashboard_address=":0")
    with cluster, Client(cluster) as client:
        yield client
