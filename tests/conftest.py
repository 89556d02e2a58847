import os
import subprocess
import uuid
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a model hub
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest

from pipeline.cluster import ClusterConfig
from pipeline.encoders import EncoderRequest
from pipeline.extract import ExtractOptions, extract
from workflows.examples import write_sugarcrepe_example

TINY = EncoderRequest("vlcache-tiny")
# Workers as threads of the test process: a real Dask scheduler without process start-up costs.
IN_PROCESS = ClusterConfig(processes=False)


def run_extract(source, fmt, dataset, store, rows_per_shard=8, request=TINY, **kwargs):
    """Extract with test-sized shards (many shards, so resume and alignment are exercised)."""
    options = ExtractOptions(rows_per_shard=rows_per_shard, progress=False, batch_size=kwargs.pop("batch_size", 16),
                             retry_failed=kwargs.pop("retry_failed", False), replace=kwargs.pop("replace", False),
                             decode_processes=kwargs.pop("decode_processes", 0), rehash=kwargs.pop("rehash", False))
    return extract(str(source), fmt, dataset, request, str(store), cluster=kwargs.pop("cluster", IN_PROCESS),
                   options=options, **kwargs)


@pytest.fixture(scope="session")
def small_sugarcrepe(tmp_path_factory):
    """A SugarCrepe-format set: 7 subsets of 4 items over 12 images."""
    root = tmp_path_factory.mktemp("sugarcrepe")
    subsets = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
    sizes = {name: 4 for name in subsets}
    return write_sugarcrepe_example(str(root), sizes=sizes, n_images=12, seed=1)


@pytest.fixture(scope="session")
def medium_sugarcrepe(tmp_path_factory):
    """40 items over 35 unique images: 5 image shards of 8 rows, enough for a worker to stop mid-run."""
    root = tmp_path_factory.mktemp("medium-sugarcrepe")
    sizes = {name: 10 for name in ("add_att", "replace_att", "swap_att", "swap_obj")}
    return write_sugarcrepe_example(str(root), sizes=sizes, n_images=60, seed=1)


@pytest.fixture(scope="session")
def gated_reference(medium_sugarcrepe, tmp_path_factory):
    """medium_sugarcrepe extracted locally with tests.gated_encoder (its gate never set): what a run on
    other workers, through faults, must store too."""
    from tests import gated_encoder

    annotations, images = medium_sugarcrepe
    store = tmp_path_factory.mktemp("gated-reference") / "store"
    run_extract(annotations, "sugarcrepe", "sc", store, images_root=images, request=gated_encoder.request(),
                batch_size=8)
    return store


def assert_same_content(store, reference):
    """The same rows for the same hashes, every array equal bit for bit, and the store verifies."""
    import numpy as np

    from cache_schemas import open_store, verify

    mine, theirs = open_store(store), open_store(reference)
    assert verify(mine).ok
    key = theirs.space_keys()[0]
    for kind in ("images", "texts"):
        assert mine.space(key).view(kind)["hash"].to_pylist() == theirs.space(key).view(kind)["hash"].to_pylist()
    for name in theirs.space(key).layouts:
        np.testing.assert_array_equal(mine.space(key).array(name)[:], theirs.space(key).array(name)[:], err_msg=name)


@pytest.fixture(scope="module")
def small_store(small_sugarcrepe, tmp_path_factory):
    """small_sugarcrepe extracted with vlcache-tiny: one store per test module (modules may damage copies)."""
    annotations, images = small_sugarcrepe
    path = tmp_path_factory.mktemp("small") / "store"
    run_extract(annotations, "sugarcrepe", "sc", path, images_root=images)
    return path


@pytest.fixture
def s3_store():
    """A real S3-compatible server (moto) on loopback, and a new bucket in it (moto keeps every server's
    buckets in one process-wide backend: a fixed name would find an earlier test's store)."""
    s3fs = pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    bucket = f"vlcache-test-{uuid.uuid4().hex[:12]}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "testing", "secret": "testing", "anon": False,
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"}}
    boto3 = pytest.importorskip("boto3")
    boto3.client("s3", aws_access_key_id="testing", aws_secret_access_key="testing",
                 **options["client_kwargs"]).create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}/store", options
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@pytest.fixture(scope="session")
def test_slurm():
    """The one-node SLURM of tests/slurm/start.sh, started unless it runs. Where this machine cannot run
    it (not root, no packages), SLURM tests skip with the reason, unless VLCACHE_REQUIRE_SLURM is set
    (CI), where they fail."""
    script = Path(__file__).parent / "slurm" / "start.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    if done.returncode == 77 and not os.environ.get("VLCACHE_REQUIRE_SLURM"):
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, f"{script} failed: {done.stderr}"
