"""The cluster recipe's settings make a valid SLURM job (no scheduler is needed to check that)."""

import os

import dask.config
import pytest
import yaml

RECIPES = os.path.join(os.path.dirname(__file__), "..", "workflows", "recipes")


def test_the_slurm_recipe_asks_one_gpu_one_worker_and_cores_to_decode_per_job(tmp_path, monkeypatch):
    jobqueue = pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)  # the recipe's log folder is relative
    with open(os.path.join(RECIPES, "jobqueue.yaml")) as f:
        settings = yaml.safe_load(f)
    # Merged into the defaults key by key, as dask merges a jobqueue.yaml it finds in DASK_CONFIG.
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in settings["jobqueue"]["slurm"].items()}):
        with jobqueue.SLURMCluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script
    assert "--nworkers" not in script and "--nthreads 2" in script  # one worker (one encoder) per job, two threads
    assert "#SBATCH --cpus-per-task=8" in script  # the cores its decode processes run on
