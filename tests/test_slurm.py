"""Extraction on a real SLURM: the one-node cluster tests/slurm/start.sh starts on this machine.

Jobs are real `sbatch` jobs whose Dask workers join the driver's scheduler; faults are real
`scancel`s, landed while a worker is known to hold a shard (tests/gated_encoder.py)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache_schemas import open_store, verify
from tests import gated_encoder

from .conftest import assert_same_content

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 300  # seconds any one wait may take before the test fails (never reached when things work)


def jobqueue_yaml(folder: Path, **settings) -> Path:
    """A dask config folder with jobqueue.slurm settings for the test cluster (1 core, 3 GB a job)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    slurm = {"cores": 1, "memory": "3GB", "queue": "debug", "interface": "lo", "log-directory": str(folder / "logs"),
             "death-timeout": 20, **settings}
    slurm = {k: v for k, v in slurm.items() if v is not None}
    (folder / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": slurm}}))
    return folder


def vlcache(*args, config: Path, env: dict | None = None, background: bool = False):
    command = [sys.executable, "-m", "workflows.cli", *map(str, args)]
    environment = {**os.environ, "DASK_CONFIG": str(config), "PYTHONPATH": str(ROOT), **(env or {})}
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=DEADLINE)


def extract_args(sugarcrepe, store, *more):
    annotations, images = sugarcrepe
    return ["extract", annotations, "--format", "sugarcrepe", "--images-root", images, "--dataset", "sc",
            "--model", "vlcache-tiny", "--encoder", gated_encoder.NAME, "--store", store, "--rows-per-shard", "8",
            "--batch-size", "8", "--quiet", *more]


def cancel(job: str, pid: int) -> None:
    """scancel, as preemption or a walltime does it; returns once the worker process is gone."""
    subprocess.run(["scancel", job], check=True)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"job {job} still runs after scancel")


def test_two_jobs_store_what_a_local_run_stores(test_slurm, medium_sugarcrepe, gated_reference, tmp_path):
    args = extract_args(medium_sugarcrepe, tmp_path / "store", "--slurm-jobs", "2")
    done = vlcache(*args, config=jobqueue_yaml(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert_same_content(tmp_path / "store", gated_reference)
    logs = list((tmp_path / "logs").glob("*.err"))
    assert len(logs) == 2  # two jobs, each with its worker


def test_a_cancelled_job_is_replaced_and_its_shard_recomputed(test_slurm, medium_sugarcrepe, gated_reference,
                                                              tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    run = vlcache(*extract_args(medium_sugarcrepe, tmp_path / "store", "--slurm-jobs", "1", "--json"),
                  config=jobqueue_yaml(tmp_path), env={"VLCACHE_TEST_GATE": str(gate)}, background=True)
    pid, job = gated_encoder.wait_for_holder(gate, run)
    cancel(job, pid)
    (gate / "open").touch()
    out, err = run.communicate(timeout=DEADLINE)
    assert run.returncode == 0, err
    assert f"SLURM job {job} ended (CANCELLED" in err
    assert re.search(rf"submitted SLURM job \d+ in place of job {job}", err)
    import json

    summary = json.loads(out)
    assert summary["workers_lost"] == 1 and summary["shards_reassigned"] >= 1
    assert_same_content(tmp_path / "store", gated_reference)


def test_with_no_replacement_left_the_run_ends_in_one_line_and_a_rerun_resumes(test_slurm, medium_sugarcrepe,
                                                                              gated_reference, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    config = jobqueue_yaml(tmp_path)
    args = extract_args(medium_sugarcrepe, tmp_path / "store", "--slurm-jobs", "1", "--slurm-replacements", "0")
    run = vlcache(*args, config=config, env={"VLCACHE_TEST_GATE": str(gate)}, background=True)
    pid, job = gated_encoder.wait_for_holder(gate, run)
    cancel(job, pid)
    (gate / "open").touch()
    _, err = run.communicate(timeout=DEADLINE)
    assert run.returncode == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: every SLURM job ended before the extraction finished (job {job} (CANCELLED)) and "
        "--slurm-replacements 0 allows no more; committed shards are kept: rerun the same command to resume")
    committed = open_store(tmp_path / "store").space(open_store(gated_reference).space_keys()[0])
    assert len(committed.committed_shards("images")) == gated_encoder.FREE_BATCHES  # what the job finished stays

    again = vlcache(*args, "--json", config=config)
    assert again.returncode == 0, again.stderr
    import json

    summary = json.loads(again.stdout)
    assert summary["images_encoded"] == summary["images"] - 8 * gated_encoder.FREE_BATCHES
    assert summary["shards_resumed"] >= 1
    assert_same_content(tmp_path / "store", gated_reference)


def run_refused(sugarcrepe, tmp_path, **settings):
    done = vlcache(*extract_args(sugarcrepe, tmp_path / "store", "--slurm-jobs", "1", "--worker-wait", "60"),
                   config=jobqueue_yaml(tmp_path / "config", **settings))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(("settings", "expected"), [
    ({"cores": None, "memory": None},
     r"--slurm-jobs needs jobqueue\.slurm\.cores and jobqueue\.slurm\.memory .* ~/\.config/dask/jobqueue\.yaml"),
    ({"memory": None}, r"--slurm-jobs needs jobqueue\.slurm\.memory \(what one job books\)"),
    ({"queue": "nosuch"}, r"SLURM refused the job \(invalid partition specified: nosuch.*\): name a partition that "
                          r"exists \(sinfo lists them\), in jobqueue\.slurm\.queue"),
    ({"memory": "9000GB"},
     r"SLURM refused the job \(Memory specification can not be satisfied.*in jobqueue\.slurm\.memory"),
    ({"cores": 4096},
     r"SLURM job \d+ can never start: it asks for more than the partition allows .*\(PartitionConfig\); "
     r"change the jobqueue\.slurm settings"),
    ({"interface": "nosuch0"}, r"jobqueue\.slurm\.interface is 'nosuch0', which is not a network interface of this "
                               r"machine \(.*lo.*\)"),
    ({"scheduler-options": {"contact_address": "tcp://192.0.2.254:9"}, "death-timeout": 3},
     r"SLURM job \d+ ended \((COMPLETED|FAILED)\) before any worker reached the scheduler at tcp://192\.0\.2\.254:9: "
     r".*set jobqueue\.slurm\.interface to a network the compute nodes share"),
], ids=["no settings", "no memory", "unknown partition", "impossible memory", "impossible cores",
        "unknown interface", "unreachable scheduler"])
def test_settings_that_cannot_work_are_one_line_naming_the_setting(test_slurm, medium_sugarcrepe, tmp_path,
                                                                   settings, expected):
    line = run_refused(medium_sugarcrepe, tmp_path, **settings)
    assert re.fullmatch(r"error: " + expected + r".*", line), line
    assert not (tmp_path / "store").exists() or verify(open_store(tmp_path / "store")).ok
    assert not _jobs_left(), "the run left SLURM jobs behind"


def _jobs_left() -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--states=PENDING,CONFIGURING,RUNNING", "--format=%i %j"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_two_extractions_submitted_as_jobs_into_one_store_store_each_content_once(test_slurm, medium_sugarcrepe,
                                                                                 tmp_path):
    """Two `vlcache extract` commands, each its own SLURM job (local worker inside), into one store at
    once: one writes the space, the other waits for its lease and finds everything present."""
    import json

    annotations, images = medium_sugarcrepe
    for name in ("first", "second"):
        command = " ".join([sys.executable, "-m", "workflows.cli", "extract", annotations, "--format", "sugarcrepe",
                            "--images-root", images, "--dataset", name, "--model", "vlcache-tiny", "--store",
                            str(tmp_path / "store"), "--rows-per-shard", "8", "--batch-size", "8", "--quiet", "--json"])
        out = tmp_path / name
        wrapped = f"cd {ROOT} && {command} > {out}.json 2> {out}.err; echo $? > {out}.rc"
        subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=3G", f"--output={out}.out", "--wrap",
                        wrapped], capture_output=True, text=True, check=True)
    deadline = time.monotonic() + DEADLINE
    while not all((tmp_path / f"{name}.rc").exists() for name in ("first", "second")):
        assert time.monotonic() < deadline, "the two extraction jobs did not finish"
        time.sleep(0.5)
    for name in ("first", "second"):
        assert (tmp_path / f"{name}.rc").read_text().strip() == "0", (tmp_path / f"{name}.err").read_text()
    store = open_store(tmp_path / "store")
    assert verify(store).ok
    space = store.space("vlcache-tiny")
    for kind in ("images", "texts"):
        hashes = space.view(kind)["hash"].to_pylist()
        assert len(hashes) == len(set(hashes)) == store.dataset("first").manifest["counts"][kind]
    summaries = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("first", "second")]
    assert sorted(s["images_encoded"] for s in summaries) == [0, summaries[0]["images"]]
