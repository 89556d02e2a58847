"""Where extraction runs: behaviour of the Dask client that the CLI relies on."""

import asyncio
import logging
import os
import signal
import threading
import time

import pytest
from distributed.utils import LoopRunner, sync

import pipeline.cluster  # noqa: F401  installs the log filter under test


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_ctrl_c_before_a_dask_call_starts_logs_no_traceback():
    """distributed's sync() cancels a coroutine that has not started yet: a known race whose only
    effect is a logged NameError traceback, which a Ctrl-C must not print."""
    logged = _Records()
    logger = logging.getLogger("tornado.application")  # distributed's handler here does not propagate
    logger.addHandler(logged)
    runner = LoopRunner(asynchronous=False)
    runner.start()
    interrupted = threading.Event()
    try:
        # The loop stays busy until the Ctrl-C has landed, however loaded the machine: sync's coroutine
        # cannot start before it.
        runner.loop.add_callback(interrupted.wait, 60)
        with pytest.raises(KeyboardInterrupt):
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C, while sync() waits
            sync(runner.loop, asyncio.sleep, 0)
        interrupted.set()
        time.sleep(1.5)  # sync's cancel callback runs once the loop is free
    finally:
        interrupted.set()
        runner.stop()
        logger.removeHandler(logged)
    assert not [r for r in logged.records if r.exc_info]


def test_a_local_cluster_starts_cleanly_while_another_holds_the_default_dashboard_port():
    import socket
    import warnings

    from pipeline.cluster import ClusterConfig, dask_client

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))  # as another Dask cluster on this machine would
        holder.listen()
    except OSError:
        pass  # something already holds it: the same situation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Port 8787 is already in use" would fail here
            with dask_client(ClusterConfig(processes=False)) as client:
                assert client.submit(sum, [1, 2]).result() == 3
    finally:
        holder.close()


def test_a_scheduler_without_workers_is_one_line_not_a_hang():
    from distributed import LocalCluster

    from cache_schemas import VlcacheError
    from pipeline.cluster import ClusterConfig, dask_client

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        config = ClusterConfig(scheduler_address=empty.scheduler_address, worker_wait=0.5)
        with pytest.raises(VlcacheError, match=r"no Dask worker joined the scheduler at \S+ within 0.5s"):
            with dask_client(config):
                pass


@pytest.mark.slow
def test_several_local_workers_run_as_processes_and_the_run_exits_cleanly(small_sugarcrepe, tmp_path):
    """Two worker processes, as `--workers 2` starts them: same content as the in-process default, and
    exit 0 with no traceback once the cluster has gone (the driver waits for the threads that
    watch its worker processes, which otherwise may log while the interpreter shuts down)."""
    import subprocess
    import sys

    from cache_schemas import open_store, verify

    annotations, images = small_sugarcrepe
    stores = {}
    for workers in ("1", "2"):
        stores[workers] = tmp_path / f"workers-{workers}"
        done = subprocess.run(
            [sys.executable, "-m", "workflows.cli", "extract", annotations, "--format", "sugarcrepe", "--dataset",
             "sc", "--model", "vlcache-tiny", "--store", str(stores[workers]), "--images-root", images,
             "--rows-per-shard", "8", "--workers", workers, "--quiet"],
            capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "Fatal Python error" not in done.stderr
        assert verify(open_store(stores[workers])).ok
    one, two = (open_store(stores[w]).space("vlcache-tiny") for w in ("1", "2"))
    assert one.view("images")["hash"].to_pylist() == two.view("images")["hash"].to_pylist()
