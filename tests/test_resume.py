"""Crash safety: kill a real multi-process extraction mid-way, then rerun it."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cache_schemas import open_store, verify
from workflows.examples import write_sugarcrepe_example

pytestmark = pytest.mark.slow


def _command(annotations, images, store, *extra):
    return [sys.executable, "-m", "workflows.cli", "extract", annotations, "--format", "sugarcrepe",
            "--dataset", "sc", "--model", "vlcache-tiny", "--store", str(store), "--images-root", images,
            "--rows-per-shard", "8", "--batch-size", "8", "--quiet", *extra]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _parts(store, kind="images"):
    return sorted(glob.glob(os.path.join(store, "spaces", "*", "parts", kind, "*.parquet")))


def _start_and_stop_midway(command, sig, min_parts=3):
    """Start the extraction in its own process group; once `min_parts` image shards have committed,
    send `sig` to the whole group (the driver and every Dask worker)."""
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = command[command.index("--store") + 1]
    deadline = time.monotonic() + 120
    while len(_parts(store)) < min_parts:
        assert proc.poll() is None, f"extraction ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.005)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    sizes = {"swap_att": 150, "add_obj": 150, "replace_rel": 100}
    return write_sugarcrepe_example(str(root), sizes=sizes, n_images=480, image_size=64, seed=3)


def test_sigkill_then_rerun_completes_with_only_uncommitted_shards(source, tmp_path):
    annotations, images = source
    store = tmp_path / "killed"
    returncode, _, _ = _start_and_stop_midway(_command(annotations, images, store), signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    committed = {p: _read(p) for p in _parts(str(store)) + _parts(str(store), "texts")}
    space = open_store(store).space("vlcache-tiny")
    planned = {k: len(space.committed_shards(k)) + len(space.pending_shards(k)) for k in ("images", "texts")}
    assert 0 < len(committed) < sum(planned.values())

    rerun = subprocess.run(_command(annotations, images, store, "--json"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["shards_run"] == summary["shards_resumed"] == sum(planned.values()) - len(committed)
    for path, data in committed.items():  # committed shards were left alone
        assert _read(path) == data
    assert verify(open_store(store)).ok

    reference = tmp_path / "reference"
    subprocess.run(_command(annotations, images, reference), check=True, capture_output=True)
    _assert_same_content(open_store(store).space("vlcache-tiny"), open_store(reference).space("vlcache-tiny"))


def _assert_same_content(resumed, reference):
    for kind in ("images", "texts"):
        a, b = resumed.view(kind).sort_by("row"), reference.view(kind).sort_by("row")
        assert a.equals(b), f"{kind} tables differ"
    rows = resumed.images()["row"].to_numpy()
    for name in ("image_patches", "image_cls", "image_global"):
        np.testing.assert_allclose(resumed.read(name, rows), reference.read(name, rows), atol=1e-3)
    text_rows = resumed.texts()["row"].to_numpy()
    np.testing.assert_allclose(resumed.read_tokens(text_rows)[0], reference.read_tokens(text_rows)[0], atol=1e-3)


def test_ctrl_c_exits_130_with_one_line_and_a_consistent_store(source, tmp_path):
    annotations, images = source
    store = tmp_path / "interrupted"
    returncode, _, err = _start_and_stop_midway(_command(annotations, images, store), signal.SIGINT)
    assert returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: committed shards are kept")
    assert "Traceback" not in err
    assert verify(open_store(store)).ok
