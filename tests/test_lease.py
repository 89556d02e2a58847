"""Concurrent writers: real `vlcache extract` processes into one store (local disk and a loopback S3
server) store each unique content once; the lease behind it waits, takes over dead holders and gives up
in one line."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cache_schemas import Location, StoreBusyError, open_store, verify
from cache_schemas.lease import hold
from workflows.examples import write_sugarcrepe_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    return write_sugarcrepe_example(str(root), sizes={"swap_att": 40, "add_obj": 40}, n_images=60, image_size=48,
                                    seed=5)


def _extract(source, dataset, store, env=None):
    annotations, images = source
    command = [sys.executable, "-m", "workflows.cli", "extract", annotations, "--format", "sugarcrepe",
               "--dataset", dataset, "--model", "vlcache-tiny", "--store", store, "--images-root", images,
               "--rows-per-shard", "8", "--batch-size", "8", "--quiet", "--json"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _run_together(source, store, env=None, storage_options=None):
    """Two extractions started at once, one per dataset name, over the same images and captions."""
    procs = [_extract(source, name, store, env) for name in ("first", "second")]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outputs]
    opened = open_store(store, storage_options=storage_options)
    assert verify(opened).ok
    space = opened.space("vlcache-tiny")
    for kind in ("images", "texts"):
        hashes = space.view(kind)["hash"].to_pylist()
        assert len(hashes) == len(set(hashes)) == opened.dataset("first").manifest["counts"][kind]
    # One run encoded everything, the other found it present.
    assert sorted(s["images_encoded"] for s in summaries) == [0, summaries[0]["images"]]
    assert sorted(s["texts_encoded"] for s in summaries) == [0, summaries[0]["texts"]]


def test_two_extractions_at_once_store_each_unique_content_once(source, tmp_path):
    _run_together(source, str(tmp_path / "store"))


def test_two_extractions_at_once_on_an_object_store(source, s3_store):
    uri, options = s3_store
    endpoint = options["client_kwargs"]["endpoint_url"]
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    _run_together(source, uri, env, storage_options=options)


def test_exclusive_writes_are_conditional_on_an_object_store(s3_store):
    uri, options = s3_store
    location = Location(uri, options)
    location.write_json("locks/x/0.json", {"a": 1}, exclusive=True)
    with pytest.raises(StoreBusyError, match="another writer took it first"):
        location.write_json("locks/x/0.json", {"a": 2}, exclusive=True)
    assert location.read_json("locks/x/0.json") == {"a": 1}


def _lease_record(tmp_path, **fields):
    now = time.time()
    record = {"owner": "x", "host": socket.gethostname(), "pid": os.getpid(), "purpose": "vlcache extract",
              "acquired": now, "expires": now + 60, "ttl": 60, "released": False, **fields}
    folder = tmp_path / "locks" / "space-k"
    folder.mkdir(parents=True)
    (folder / "0.json").write_text(json.dumps(record))
    return Location(str(tmp_path))


def test_a_live_holder_makes_the_next_writer_wait_then_give_up_in_one_line(tmp_path):
    location = _lease_record(tmp_path)  # held by this very (live) process
    waited = []
    with pytest.raises(StoreBusyError, match=r"space-k .* is held by vlcache extract \(pid \d+ on .*gave up after"):
        with hold(location, "space-k", "second", wait=0.2, on_wait=waited.append):
            pass
    assert len(waited) == 1 and waited[0].startswith("waiting for space-k")


@pytest.mark.parametrize("fields", [{"pid": 2**22 + 12345}, {"expires": 0}, {"released": True}],
                         ids=["dead-process", "expired", "released"])
def test_a_dead_expired_or_released_lease_is_taken_over_at_once(tmp_path, fields):
    location = _lease_record(tmp_path, **fields)
    with hold(location, "space-k", "second", wait=0):
        mine = location.read_json("locks/space-k/1.json")
        assert mine["purpose"] == "second" and not mine["released"]
    assert location.read_json("locks/space-k/1.json")["released"]


def test_a_lease_is_released_when_the_block_fails(tmp_path):
    location = Location(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with hold(location, "space-k", "first"):
            raise KeyboardInterrupt
    with hold(location, "space-k", "second", wait=0):
        pass


def _unreadable_record(tmp_path, content: bytes, age: float) -> Location:
    folder = tmp_path / "locks" / "space-k"
    folder.mkdir(parents=True)
    (folder / "0.json").write_bytes(content)
    past = time.time() - age
    os.utime(folder / "0.json", (past, past))
    return Location(str(tmp_path))


UNREADABLE = {"garbage": b"\x00\xff not json", "truncated": b'{"owner": "x", "host": "h', "empty": b"",
              "not a record": b'{"owner": "x"}', "wrong types": b'{"purpose": 1, "host": "h", "pid": "1", '
                                                                b'"acquired": 0, "expires": 1e20}'}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=list(UNREADABLE))
def test_an_unreadable_lease_record_holds_the_lease_while_younger_than_ttl(tmp_path, content):
    """A record cut short (a writer killed mid-write, a full disk) counts as held, as a record being written
    would, then as free once older than the ttl: never a JSON error for every writer for ever."""
    location = _unreadable_record(tmp_path, content, age=1)
    with pytest.raises(StoreBusyError) as busy:
        with hold(location, "space-k", "second", wait=0, ttl=30):
            pass
    message = str(busy.value)
    assert len(message.splitlines()) == 1 and "gave up after waiting" in message
    assert f"an unreadable lease record, {location.url('locks/space-k/0.json')} (" in message
    past = time.time() - 31
    os.utime(tmp_path / "locks/space-k/0.json", (past, past))
    with hold(location, "space-k", "second", wait=0, ttl=30):
        assert location.read_json("locks/space-k/1.json")["purpose"] == "second"
    with hold(location, "space-k", "third", wait=0):  # and the next writer prunes it
        assert not location.exists("locks/space-k/0.json")


def test_an_unreadable_lease_record_on_an_object_store_is_aged_by_its_last_modified_time(s3_store):
    uri, options = s3_store
    location = Location(uri, options)
    location.write_bytes("locks/space-k/0.json", b"{")
    with pytest.raises(StoreBusyError, match="unreadable lease record"):
        with hold(location, "space-k", "second", wait=0, ttl=30):
            pass
    with hold(location, "space-k", "second", wait=10, ttl=1):  # free within a second or two (S3's clock)
        assert location.read_json("locks/space-k/1.json")["purpose"] == "second"
