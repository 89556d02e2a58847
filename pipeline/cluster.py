"""Where the encoder pass runs: a LocalCluster on this machine (the default), an existing Dask
scheduler, or SLURM jobs through dask-jobqueue (configured by dask's `jobqueue.slurm` settings,
e.g. ~/.config/dask/jobqueue.yaml; see workflows/recipes/jobqueue.yaml)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dask.utils import key_split
from distributed import Client, Future, LocalCluster, as_completed

from cache_schemas import VlcacheError

from .decoding import usable_cores
from .slurm import RESUME, SlurmJobs, check_settings, start_scheduler

WATCH_SECONDS = 2.0  # how often a run looks at its workers while it waits for results


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
    worker_wait: float = 600.0  # seconds a run may wait with no worker (to bring the first, or after losing all)
    slurm_replacements: int = 10  # SLURM jobs that may be submitted in place of jobs that ended mid-run

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


class Workers:
    """The workers an extraction runs on: its Dask client, and the watch that keeps a run from waiting
    for workers that are gone. Lost SLURM jobs are replaced (`pipeline.slurm`); a run with no worker
    for `worker_wait` seconds, or that lost its scheduler, ends in one line; a worker that leaves
    mid-run is counted, and the shards it held go to another."""

    def __init__(self, client: Client, config: ClusterConfig, where: str, jobs: SlurmJobs | None = None):
        self.client, self.config, self.where, self.jobs = client, config, where, jobs
        self.lost = 0  # workers that left while the run needed them
        self.reassigned = 0  # shards they had been given, which other workers then ran
        self._removed: list[tuple[str, int]] = []  # (worker address, its shards), as the scheduler reports them
        self._names: dict[str, str] = {}  # worker address -> name, for messages
        self._workerless_since: float | None = None
        # The scheduler says when it removes a worker, with the tasks it held: no loss falls between two looks.
        client.subscribe_topic("all", self._on_scheduler_event)

    def unwatch(self) -> None:
        """Before the client closes: the scheduler would send the client's own removal to it, closing."""
        if self.client.status == "running":
            self.client.unsubscribe_topic("all")

    def _on_scheduler_event(self, event) -> None:  # on the client's event loop
        _, message = event
        if isinstance(message, dict) and message.get("action") == "remove-worker":
            shards = sum(key_split(key) == "run_shard" for key in message.get("processing-tasks", ()))
            self._removed.append((message.get("worker", "?"), shards))

    def as_completed(self, futures: list[Future]) -> Iterator[Future]:
        """`futures` as they finish (distributed's own iterator), while a thread watches the workers;
        when the run cannot go on, the thread cancels them and its reason is raised here."""
        failure: list[VlcacheError] = []
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(futures, stop, failure), daemon=True,
                                   name="vlcache-watch-workers")
        watcher.start()
        try:
            for future in as_completed(futures):
                if not failure and future.status == "cancelled":
                    self._require_scheduler()  # a lost scheduler cancels every future: say so, not that
                if failure:
                    raise failure[0]
                yield future
        finally:
            stop.set()
            watcher.join()
            self._count_losses()  # a loss the watcher has not looked at yet still counts
        if failure:
            raise failure[0]

    def _watch(self, futures: list[Future], stop: threading.Event, failure: list[VlcacheError]) -> None:
        while not stop.wait(WATCH_SECONDS):
            try:
                self.check()
            except VlcacheError as exc:
                failure.append(exc)
                if self.client.status == "running":
                    self.client.cancel(futures)  # ends the iteration in as_completed
                return

    def check(self) -> None:
        """Count and report workers that left, replace ended SLURM jobs, and end the run (one line) if it
        lost its scheduler or has been without workers too long."""
        self._count_losses()
        now = time.monotonic()
        self._require_scheduler()
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
        except (OSError, KeyError, ValueError):  # the scheduler went since the last look
            self._require_scheduler()
            return
        self._names.update((address, str(w["name"])) for address, w in workers.items())
        if self.jobs is not None:
            for event in self.jobs.check({str(w["name"]) for w in workers.values()}):
                _say(event)
        self._require_some_worker(bool(workers), now)

    def _count_losses(self) -> None:
        while self._removed:
            address, shards = self._removed.pop(0)
            self.lost += 1
            self.reassigned += shards
            name = self._names.get(address, address)
            _say(f"worker {name} left holding {shards} shards; other workers take them" if shards
                 else f"worker {name} left")

    def _require_some_worker(self, any_worker: bool, now: float) -> None:
        if any_worker:
            self._workerless_since = None
            return
        self._workerless_since = self._workerless_since or now
        if now - self._workerless_since > self.config.worker_wait:
            jobs = f" ({self.jobs.describe()})" if self.jobs is not None else ""
            raise WorkersLostError(f"no Dask worker on {self.where} for {self.config.worker_wait:g}s{jobs}; "
                                   f"{RESUME}")

    def _require_scheduler(self) -> None:
        if self.client.status not in ("running", "newly-created"):
            raise WorkersLostError(f"lost the Dask scheduler ({self.where}); {RESUME}")


class WorkersLostError(VlcacheError, RuntimeError):
    """The run cannot go on: its scheduler, or every worker, is gone; what committed stays."""


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def start_workers(config: ClusterConfig) -> Iterator[Workers]:
    """The cluster `config` describes, with at least one worker joined (or one line within
    `worker_wait`), watched while in use and closed on the way out."""
    with _connected(config) as (client, where, jobs):
        workers = Workers(client, config, where, jobs)
        try:
            _wait_for_a_worker(workers)
            yield workers
        finally:
            workers.unwatch()


@contextmanager
def _connected(config: ClusterConfig) -> Iterator[tuple[Client, str, SlurmJobs | None]]:
    """A client of the cluster `config` describes, where it runs, and its SLURM jobs if any."""
    if config.scheduler_address:
        try:
            client = Client(config.scheduler_address, timeout="20s")
        except OSError as exc:
            raise VlcacheError(f"cannot reach the Dask scheduler at {config.scheduler_address}: {exc}") from None
        try:
            yield client, f"the scheduler at {config.scheduler_address}", None
        finally:
            _close_client(client)
    elif config.slurm_jobs:
        check_settings()
        cluster = start_scheduler()
        # Workers dial the address the scheduler advertises (scheduler-options' contact_address, if set).
        address = getattr(cluster.scheduler, "contact_address", None) or cluster.scheduler_address
        jobs = SlurmJobs(address, config.slurm_jobs, config.slurm_replacements)
        try:
            jobs.fill()
            with Client(cluster) as client:
                yield client, f"{config.slurm_jobs} SLURM jobs", jobs
        finally:
            jobs.cancel()
            _close(cluster)
    else:
        with _workers_ignore_ctrl_c():
            # Dashboard on a free port (None still means :8787, which another cluster may hold).
            cluster = LocalCluster(n_workers=config.workers, threads_per_worker=config.threads_per_worker or 1,
                                   processes=config.local_processes(), dashboard_address=":0")
        try:
            with Client(cluster) as client:
                yield client, "this machine", None
        finally:
            _close(cluster)


def _wait_for_a_worker(workers: Workers) -> None:
    """Tasks sent to a cluster without workers wait forever: give up, in one line, after a while. SLURM
    jobs are watched meanwhile, so a refused or ended job says so at once."""
    wait_s = workers.config.worker_wait
    deadline = time.monotonic() + wait_s
    while True:
        try:
            workers.client.wait_for_workers(1, timeout=min(WATCH_SECONDS, max(0.0, deadline - time.monotonic())))
            return
        except TimeoutError:
            if workers.jobs is not None:
                workers.check()
            if time.monotonic() >= deadline:
                jobs = f" ({workers.jobs.describe()})" if workers.jobs is not None else ""
                raise VlcacheError(f"no Dask worker joined {workers.where} within {wait_s:g}s{jobs}") from None


def _close_client(client: Client) -> None:
    """Closing a client that lost its scheduler cancels its attempt to reconnect, which distributed logs
    as a traceback: the run has already said, in one line, that the scheduler is gone."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    if client.status not in ("running", "newly-created"):
        logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        logger.setLevel(level)


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
