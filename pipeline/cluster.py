"""Where the encoder pass runs: a LocalCluster on this machine (the default), an existing Dask
scheduler, or SLURM jobs through dask-jobqueue (configured by dask's `jobqueue.slurm` settings,
e.g. ~/.config/dask/jobqueue.yaml; see workflows/recipes/jobqueue.yaml)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from distributed import Client, LocalCluster

from cache_schemas import VlcacheError

from .decoding import usable_cores


@dataclass(frozen=True)
class ClusterConfig:
    scheduler_address: str | None = None
    slurm_jobs: int = 0
    workers: int = 1
    # None: settled by `for_device` (two on a GPU, one on a CPU); a client started without it gets one.
    threads_per_worker: int | None = None
    # Local workers as processes (True) or as threads of this process (False). None, the default: one
    # worker runs in this process, which spares a second import of torch and a spawn (about 7 s of a
    # run's fixed cost); several run as processes, so that decoding in each escapes this process's GIL.
    processes: bool | None = None
    worker_wait: float = 600.0  # seconds an existing scheduler or SLURM jobs may take to bring a first worker

    @property
    def kind(self) -> str:
        return "scheduler" if self.scheduler_address else "slurm" if self.slurm_jobs else "local"

    def for_device(self, gpu: bool) -> ClusterConfig:
        """Threads per local worker, unless given: two where a GPU encodes, so one shard writes (and the
        next one's decoding starts) while another encodes, which doubled images/s on an H200
        (bench/README.md); one where the CPU encodes, whose cores torch already uses."""
        if self.threads_per_worker is not None:
            return self
        return dataclasses.replace(self, threads_per_worker=2 if gpu else 1)

    def cores_per_worker(self) -> int | None:
        """This machine's cores each local worker may use; None for remote workers, which count their own."""
        return max(1, usable_cores() // self.workers) if self.kind == "local" else None

    def torch_threads(self) -> int | None:
        """CPU threads each local worker's torch may use, so workers share the cores instead of fighting
        (Dask sets OMP_NUM_THREADS=1 in its workers). Remote workers keep their own settings."""
        cores = self.cores_per_worker()
        return None if cores is None else max(1, cores // (self.threads_per_worker or 1))

    def local_processes(self) -> bool:
        return self.workers > 1 if self.processes is None else self.processes


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
            _wait_for_a_worker(client, config, f"the scheduler at {config.scheduler_address}")
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
            cluster = LocalCluster(n_workers=config.workers, threads_per_worker=config.threads_per_worker or 1,
                                   processes=config.local_processes(), dashboard_address=":0")
    try:
        with Client(cluster) as client:
            if config.slurm_jobs:
                _wait_for_a_worker(client, config, f"{config.slurm_jobs} SLURM jobs (see squeue)")
            yield client
    finally:
        _close(cluster)


def _wait_for_a_worker(client: Client, config: ClusterConfig, where: str) -> None:
    """Tasks sent to a cluster without workers wait forever: give up, in one line, after a while."""
    try:
        client.wait_for_workers(1, timeout=config.worker_wait)
    except TimeoutError:
        raise VlcacheError(f"no Dask worker joined {where} within {config.worker_wait:g}s") from None


def _close(cluster) -> None:
    """The work is done (or failed on its own account) by now: a cluster that will not shut down in
    time is reported, never turned into a failure of the run."""
    try:
        cluster.close(timeout=60)
    except (TimeoutError, OSError) as exc:
        print(f"warning: the Dask cluster did not shut down cleanly ({type(exc).__name__}); "
              "everything committed is kept", file=sys.stderr)
    _join_process_watchers(timeout=10)


def _join_process_watchers(timeout: float) -> None:
    """distributed watches each worker process from a daemon thread that logs when the process is
    reaped. One still running when the interpreter exits can write to stderr during finalisation,
    which aborts the process (SIGABRT after a successful run; dask/distributed#7617)."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith("AsyncProcess") and thread.name.endswith("watch process join"):
            thread.join(max(0.0, deadline - time.monotonic()))
