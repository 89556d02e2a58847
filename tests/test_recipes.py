"""The cluster recipe: its settings make a valid SLURM job, and it runs end to end on the test SLURM."""

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


@pytest.mark.slurm
@pytest.mark.slow
def test_the_slurm_recipe_runs_end_to_end_on_the_test_cluster(test_slurm, medium_sugarcrepe, tmp_path):
    """The recipe and its jobqueue.yaml as a user runs them on a CPU partition: only the lines the
    yaml says to edit are edited (partition, the GPU line, cores and memory that fit a test node)."""
    import shutil
    import subprocess
    import sys

    from cache_schemas import open_store

    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES, recipes)
    settings = (recipes / "jobqueue.yaml").read_text()
    for line, edited in (("queue: gpu", "queue: debug"), ("    job_extra_directives:", "    # job_extra_directives:"),
                         ("job_cpu: 8", "job_cpu: 1"), ("memory: 32GB", "memory: 3GB")):
        assert line in settings
        settings = settings.replace(line, edited)
    (recipes / "jobqueue.yaml").write_text(settings)
    annotations, images = medium_sugarcrepe
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "SOURCE": annotations, "IMAGES": images, "FORMAT": "sugarcrepe", "DATASET": "sc",
           "STORE": str(tmp_path / "store"), "JOBS": "2", "MODEL": "vlcache-tiny", "PRETRAINED": "", "DEVICE": "cpu",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "PYTHONPATH": root}
    env.pop("DASK_CONFIG", None)
    done = subprocess.run(["bash", str(recipes / "extract_on_slurm.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("ok: checked 1 datasets")
    space = open_store(tmp_path / "store").space(open_store(tmp_path / "store").space_keys()[0])
    assert space.spec.image_tokens == ("patches", "cls", "values") and space.spec.projected
    assert len(list((tmp_path / "logs" / "dask").glob("vlcache-extract-*.err"))) == 2  # its two jobs ran
