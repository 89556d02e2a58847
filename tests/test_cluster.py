"""Where extraction runs: behaviour of the Dask client that the CLI relies on."""

import asyncio
import logging
import os
import re
import signal
import threading
import time

import pytest
from distributed.utils import LoopRunner, sync

import pipeline.cluster  # noqa: F401  installs the log filter under test
from tests import gated_encoder

from .conftest import assert_same_content


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
    # Python's own Ctrl-C, whatever an earlier test in this process left (the suite once saw none raised)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
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
        signal.signal(signal.SIGINT, handler)
    assert not [r for r in logged.records if r.exc_info]


def test_a_local_cluster_starts_cleanly_while_another_holds_the_default_dashboard_port():
    import socket
    import warnings

    from pipeline.cluster import ClusterConfig, start_workers

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))  # as another Dask cluster on this machine would
        holder.listen()
    except OSError:
        pass  # something already holds it: the same situation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Port 8787 is already in use" would fail here
            with start_workers(ClusterConfig(processes=False)) as workers:
                assert workers.client.submit(sum, [1, 2]).result() == 3
    finally:
        holder.close()


def test_a_scheduler_without_workers_is_one_line_not_a_hang():
    from distributed import LocalCluster

    from cache_schemas import VlcacheError
    from pipeline.cluster import ClusterConfig, start_workers

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        config = ClusterConfig(scheduler_address=empty.scheduler_address, worker_wait=0.5)
        with pytest.raises(VlcacheError, match=r"no Dask worker joined the scheduler at \S+ within 0.5s"):
            with start_workers(config):
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


class RemoteCluster:
    """A Dask scheduler and workers as processes of their own, as on other machines, for
    `--scheduler-address`. Workers run without a nanny, so killing one is a machine going away."""

    def __init__(self, folder, workers: int, env: dict):
        import json
        import subprocess
        import sys

        self.env = env
        file = folder / "scheduler.json"
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", ":0", "--scheduler-file", str(file)], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        self.workers = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny",
             "--name", f"remote-{i}", "--death-timeout", "30"], env=env, stderr=subprocess.DEVNULL)
            for i in range(workers)]

    def close(self):
        for process in (*self.workers, self.scheduler):
            process.kill()
            process.wait()


def _gated_run(tmp_path, sugarcrepe, address, gate, *more):
    import subprocess
    import sys

    annotations, images = sugarcrepe
    args = ["extract", annotations, "--format", "sugarcrepe", "--images-root", images, "--dataset", "sc",
            "--model", "vlcache-tiny", "--encoder", gated_encoder.NAME, "--store", str(tmp_path / "store"),
            "--rows-per-shard", "8", "--batch-size", "8", "--quiet", "--scheduler-address", address, *more]
    return subprocess.Popen([sys.executable, "-m", "workflows.cli", *args], env=gated_encoder.environment(gate),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_remote_worker_killed_mid_shard_costs_only_that_shard(medium_sugarcrepe, gated_reference, tmp_path):
    import json

    gate = tmp_path / "gate"
    gate.mkdir()
    cluster = RemoteCluster(tmp_path, workers=2, env=gated_encoder.environment(gate))
    try:
        run = _gated_run(tmp_path, medium_sugarcrepe, cluster.address, gate, "--json")
        os.kill(gated_encoder.wait_for_holder(gate, run)[0], signal.SIGKILL)  # the machine holding a shard goes away
        (gate / "open").touch()
        out, err = run.communicate(timeout=300)
    finally:
        cluster.close()
    assert run.returncode == 0, err
    summary = json.loads(out)
    assert summary["workers_lost"] == 1 and summary["shards_reassigned"] >= 1
    assert re.search(r"worker remote-\d left holding \d+ shards; other workers take them", err)
    assert_same_content(tmp_path / "store", gated_reference)


@pytest.mark.slow
def test_a_killed_scheduler_is_one_line_and_a_rerun_resumes(medium_sugarcrepe, gated_reference, tmp_path):
    import json

    gate = tmp_path / "gate"
    gate.mkdir()
    (tmp_path / "first").mkdir()
    cluster = RemoteCluster(tmp_path / "first", workers=1, env=gated_encoder.environment(gate))
    try:
        run = _gated_run(tmp_path, medium_sugarcrepe, cluster.address, gate)
        gated_encoder.wait_for_holder(gate, run)
        cluster.scheduler.kill()
        _, err = run.communicate(timeout=300)
    finally:
        cluster.close()
    assert run.returncode == 2
    assert err.strip().splitlines() == [
        f"error: lost the Dask scheduler (the scheduler at {cluster.address}); committed shards are kept: rerun the "
        "same command to resume"]

    (gate / "open").touch()
    (tmp_path / "second").mkdir()
    cluster = RemoteCluster(tmp_path / "second", workers=1, env=gated_encoder.environment(gate))
    try:
        again = _gated_run(tmp_path, medium_sugarcrepe, cluster.address, gate, "--json")
        out, err = again.communicate(timeout=300)
    finally:
        cluster.close()
    assert again.returncode == 0, err
    summary = json.loads(out)
    assert 0 < summary["images_encoded"] < summary["images"]  # what committed before the loss is not encoded again
    assert_same_content(tmp_path / "store", gated_reference)
