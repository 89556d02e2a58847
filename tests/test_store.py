"""Store access: read-only opening, dataset conflicts, finding spaces, an S3-compatible server,
and an existing Dask scheduler."""

import json

import numpy as np
import pytest
from distributed import LocalCluster

from cache_schemas import (
    DatasetConflictError,
    StoreNotFoundError,
    UnknownDatasetError,
    UnknownSpaceError,
    open_store,
    verify,
)
from pipeline.cluster import ClusterConfig
from trainer.run import evaluate_head

from .conftest import run_extract


def test_reading_a_missing_store_fails_clearly(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no vlcache store at"):
        open_store(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_a_read_only_store_refuses_writes(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images)
    store = open_store(tmp_path / "store")
    with pytest.raises(PermissionError, match="opened read-only"):
        store.register_dataset("x", *(store.dataset("sc").items, store.dataset("sc").images,
                                      store.dataset("sc").texts, store.dataset("sc").errors), source={})
    with pytest.raises(UnknownDatasetError, match="did you mean 'sc'"):
        store.dataset("scc")
    with pytest.raises(UnknownSpaceError, match="no space 'ViT-B-32'"):
        store.space("ViT-B-32")
    assert store.space("vlcache-tiny").key == store.space_keys()[0]


def test_the_same_name_with_other_content_is_refused(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images)
    (tmp_path / "other.jsonl").write_text(json.dumps({"image": f"{images}/000000.png", "caption": "else"}) + "\n")
    with pytest.raises(DatasetConflictError, match="already exists .* with different content"):
        run_extract(tmp_path / "other.jsonl", "jsonl", "sc", tmp_path / "store")


@pytest.fixture
def s3_store():
    """A real S3-compatible server (moto) on loopback, and a bucket in it."""
    s3fs = pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "testing", "secret": "testing", "anon": False,
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"}}
    boto3 = pytest.importorskip("boto3")
    boto3.client("s3", aws_access_key_id="testing", aws_secret_access_key="testing",
                 **options["client_kwargs"]).create_bucket(Bucket="vlcache-test")
    try:
        yield "s3://vlcache-test/store", options
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_extract_to_and_read_from_s3(s3_store, small_sugarcrepe, tmp_path):
    uri, options = s3_store
    annotations, images = small_sugarcrepe
    summary = run_extract(annotations, "sugarcrepe", "sc", uri, images_root=images, storage_options=options)
    local = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "local", images_root=images)
    remote = open_store(uri, storage_options=options)
    assert verify(remote).ok
    assert summary.images_encoded == local.images_encoded > 0
    space, reference = remote.space("vlcache-tiny"), open_store(tmp_path / "local").space("vlcache-tiny")
    rows = space.images()["row"].to_numpy()
    np.testing.assert_array_equal(space.read("image_global", rows), reference.read("image_global", rows))
    again = run_extract(annotations, "sugarcrepe", "sc", uri, images_root=images, storage_options=options)
    assert again.shards_run == 0
    # The trainer streams from the same URL: a report as good as from the local copy.
    remote_report = evaluate_head(uri, "sc", "global", str(tmp_path / "r"), storage_options=options)
    local_report = evaluate_head(str(tmp_path / "local"), "sc", "global", str(tmp_path / "l"))
    assert remote_report["caption_accuracy"] == local_report["caption_accuracy"]


def test_an_existing_scheduler_runs_the_extraction(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        summary = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images,
                              cluster=ClusterConfig(scheduler_address=cluster.scheduler_address))
    assert summary.images_encoded > 0 and verify(open_store(tmp_path / "store")).ok
