"""Extraction on SLURM, on the one-node test cluster of tests/slurm/start.sh (start it first, as root):
how long a job takes from `sbatch` to its worker joining the scheduler; one extraction on 1 and 2 jobs
against a local run of the same command; and what losing a job mid-run costs: the shards it held, run
again by its replacement, and the seconds the run took against a run without the loss. Writes
slurm_bench.json and slurm_bench.md.

    python bench/slurm_bench.py [--repeats 3] [--images 120] [--out runs/bench]"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results import publish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.gated_encoder: the fault the tests inject, injected here the same way
GATED = "tests.gated_encoder:GatedEncoder"


def dask_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    slurm = {"cores": 1, "memory": "3GB", "queue": "debug", "interface": "lo", "log-directory": str(folder / "logs")}
    (folder / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": slurm}}))
    return folder


def job_starts(config: Path, jobs: int) -> list[float]:
    """Seconds from submitting `jobs` jobs until each one's worker joined the scheduler."""
    os.environ["DASK_CONFIG"] = str(config)
    import dask.config

    dask.config.refresh()
    from distributed import Client

    from pipeline.slurm import SlurmJobs, start_scheduler

    cluster = start_scheduler()
    slurm = SlurmJobs(cluster.scheduler_address, jobs, replacements=0)
    try:
        with Client(cluster) as client:
            started = time.perf_counter()
            slurm.fill()
            joined: list[float] = []
            while len(joined) < jobs:
                count = len(client.scheduler_info(n_workers=-1)["workers"])
                joined += [time.perf_counter() - started] * (count - len(joined))
                time.sleep(0.02)
            return joined
    finally:
        slurm.cancel()
        cluster.close()


def extract(source: tuple[str, str], store: Path, config: Path, *more: str, gate: Path | None = None,
            background: bool = False):
    annotations, images = source
    command = [sys.executable, "-m", "workflows.cli", "extract", annotations, "--format", "sugarcrepe",
               "--images-root", images, "--dataset", "sc", "--model", "vlcache-tiny", "--encoder", GATED,
               "--store", str(store), "--rows-per-shard", "8", "--batch-size", "8", "--quiet", "--json", *more]
    env = {**os.environ, "DASK_CONFIG": str(config), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    if gate is not None:
        env["VLCACHE_TEST_GATE"] = str(gate)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process if background else finish(process)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=900)
    if process.returncode != 0:
        raise SystemExit(f"extraction failed: {err}")
    return json.loads(out)


def with_a_lost_job(source, store: Path, config: Path, gate: Path) -> tuple[dict, float]:
    """One job, cancelled while its worker holds a shard (tests/gated_encoder.py); its replacement finishes."""
    from tests.gated_encoder import wait_for_holder

    gate.mkdir()
    started = time.perf_counter()
    run = extract(source, store, config, "--slurm-jobs", "1", gate=gate, background=True)
    pid, job = wait_for_holder(gate, run)
    subprocess.run(["scancel", job], check=True)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    (gate / "open").touch()
    summary = finish(run)
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    from workflows.examples import write_sugarcrepe_example

    work = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    config = dask_config(work / "config")
    per = max(1, args.images // 6)
    source = write_sugarcrepe_example(str(work / "sc"), sizes={"add_att": per, "replace_att": per, "swap_att": per,
                                                               "swap_obj": per}, n_images=args.images, seed=1)
    starts = {jobs: [job_starts(config, jobs) for _ in range(args.repeats)] for jobs in (1, 2)}
    runs: dict[str, list[float]] = {"local": [], "1 job": [], "2 jobs": [], "1 job, cancelled mid-run": []}
    lost: list[dict] = []
    for r in range(args.repeats):  # side by side: each repeat runs every variant once
        for name, more in (("local", ()), ("1 job", ("--slurm-jobs", "1")), ("2 jobs", ("--slurm-jobs", "2"))):
            started = time.perf_counter()
            summary = extract(source, work / f"{name}-{r}", config, *more)
            runs[name].append(time.perf_counter() - started)
        summary, seconds = with_a_lost_job(source, work / f"lost-{r}", config, work / f"gate-{r}")
        runs["1 job, cancelled mid-run"].append(seconds)
        lost.append({"workers_lost": summary["workers_lost"], "shards_reassigned": summary["shards_reassigned"],
                     "image_shards": -(-summary["images"] // 8), "text_shards": -(-summary["texts"] // 8)})
    results = {"machine": platform.node(), "cores": os.cpu_count(), "repeats": args.repeats,
               "images": summary["images"], "texts": summary["texts"], "job_start_s": starts,
               "extraction_s": runs, "loss": lost}
    publish(args.out, "slurm_bench", results, table(results))


def table(results: dict) -> str:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}"

    lines = [f"SLURM on {results['machine']} ({results['cores']} cores), one node; medians of {results['repeats']} "
             f"runs; {results['images']} images, {results['texts']} texts, 8 rows a shard, vlcache-tiny.", "",
             "| jobs submitted at once | sbatch to the first worker joined (s) | to the last (s) |", "|---|---|---|"]
    for jobs, runs in results["job_start_s"].items():
        lines.append(f"| {jobs} | {med([r[0] for r in runs])} | {med([r[-1] for r in runs])} |")
    lines += ["", "| extraction | seconds (whole command) | x local |", "|---|---|---|"]
    local = statistics.median(results["extraction_s"]["local"])
    for name, seconds in results["extraction_s"].items():
        lines.append(f"| {name} | {med(seconds)} | {statistics.median(seconds) / local:.2f} |")
    lost = results["loss"]
    lines += ["", f"A job cancelled while its worker held a shard: workers lost {[x['workers_lost'] for x in lost]}, "
              f"shards handed to its replacement {[x['shards_reassigned'] for x in lost]} of "
              f"{lost[0]['image_shards']} image and {lost[0]['text_shards']} text shards."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
