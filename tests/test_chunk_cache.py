"""The local cache of a remote store's chunks (cache_schemas/chunk_cache.py), against a real S3 server
(moto on loopback) that logs every request it serves: a warm read GETs no chunk file, reads are bit for bit
a local store's, the folder never holds more than its bound, two processes share it, and a chunk path
rewritten on the server is read anew."""

import hashlib
import multiprocessing
import os
import threading

import numpy as np
import pytest
import s3fs

from cache_schemas import ChunkCache, open_store
from cache_schemas.chunk_cache import parse_size
from workflows.cli import main


class _Logged:
    """A WSGI app that notes (method, path, query) of each request before serving it."""

    def __init__(self, app):
        self.app, self.requests = app, []

    def __call__(self, environ, start_response):
        self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        return self.app(environ, start_response)


@pytest.fixture
def logged_s3(s3_store, small_store):
    """small_store on the server, read through a second moto endpoint that logs requests (moto's buckets
    are one backend per process, so both endpoints serve the same objects)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    uri, options = s3_store
    s3fs.S3FileSystem(**options).put(str(small_store), uri.removeprefix("s3://"), recursive=True)
    app = _Logged(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    logged = {**options, "client_kwargs": {**options["client_kwargs"],
                                           "endpoint_url": f"http://127.0.0.1:{server.server_port}"}}
    try:
        yield uri, logged, app.requests
    finally:
        server.shutdown()
        thread.join()


def chunk_gets(requests) -> int:
    return sum(method == "GET" and "/c/" in path and "list-type" not in query for method, path, query in requests)


def read_all(store) -> dict[str, np.ndarray]:
    """Every tensor of dataset sc: what an epoch reads, each array in full at the dataset's rows."""
    space, items = store.space("vlcache-tiny"), store.dataset("sc").items
    images = space.rows("images", items["image"])
    texts = space.rows("texts", items["caption"])
    tokens, mask = space.read_tokens_padded(texts)
    arrays = {name: space.read(name, images) for name in ("image_patches", "image_cls", "image_global")}
    return {**arrays, "text_global": space.read("text_global", texts), "text_tokens": tokens, "mask": mask}


def assert_identical(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


class _Checked(ChunkCache):
    """Checks the bound after every file it keeps."""

    def publish(self, name, data):
        super().publish(name, data)
        assert self.size() <= self.max_bytes


def test_a_warm_read_gets_no_chunk_and_matches_a_local_store(logged_s3, small_store, tmp_path):
    uri, options, requests = logged_s3
    local = read_all(open_store(small_store))
    cache = _Checked(str(tmp_path / "cache"), max_bytes=10**9)
    cold = read_all(open_store(uri, storage_options=options, cache=cache))
    assert chunk_gets(requests) > 0
    held = cache.size()
    requests.clear()
    warm = read_all(open_store(uri, storage_options=options, cache=cache))  # a new reader, as a new process
    assert chunk_gets(requests) == 0, [r for r in requests if "/c/" in r[1]]
    assert any(path.endswith("/zarr.json") for _, path, _ in requests)  # metadata: always from the store
    assert_identical(cold, local)
    assert_identical(warm, local)
    assert cache.size() == held and not [p for p in _all_files(cache.folder) if p.endswith(".partial")]


def test_the_bound_evicts_the_least_recently_used_and_reads_stay_exact(logged_s3, small_store, tmp_path):
    uri, options, requests = logged_s3
    local = read_all(open_store(small_store))
    everything = ChunkCache(str(tmp_path / "all"), max_bytes=10**9)
    read_all(open_store(uri, storage_options=options, cache=everything))
    sizes = sorted(size for _, size, _ in everything.entries())
    bound = sum(sizes) // 2  # half of what an epoch touches: it must evict, and read again
    assert sizes[-1] <= bound
    small = _Checked(str(tmp_path / "half"), max_bytes=bound)
    for _ in range(2):
        assert_identical(read_all(open_store(uri, storage_options=options, cache=small)), local)
    assert 0 < small.size() <= bound
    requests.clear()
    read_all(open_store(uri, storage_options=options, cache=small))
    assert chunk_gets(requests) > 0  # what was evicted comes from the store again


def test_files_larger_than_the_bound_are_read_as_without_a_cache(logged_s3, small_store, tmp_path):
    uri, options, requests = logged_s3
    local = read_all(open_store(small_store))
    read_all(open_store(uri, storage_options=options))
    uncached, requests[:] = chunk_gets(requests), []
    tiny = ChunkCache(str(tmp_path / "tiny"), max_bytes=1)
    assert_identical(read_all(open_store(uri, storage_options=options, cache=tiny)), local)
    assert chunk_gets(requests) == uncached and tiny.size() == 0  # ranges, as zarr asks: never a whole file


def _read_digest(uri, options, folder, bound) -> str:
    arrays = read_all(open_store(uri, storage_options=options, cache=ChunkCache(folder, max_bytes=bound)))
    return hashlib.sha256(b"".join(arrays[name].tobytes() for name in sorted(arrays))).hexdigest()


def test_two_processes_share_one_folder_within_its_bound(logged_s3, small_store, tmp_path):
    uri, options, _ = logged_s3
    local = read_all(open_store(small_store))
    expected = hashlib.sha256(b"".join(local[name].tobytes() for name in sorted(local))).hexdigest()
    folder = str(tmp_path / "shared")
    probe = ChunkCache(str(tmp_path / "probe"))
    read_all(open_store(uri, storage_options=options, cache=probe))
    bound = probe.size() // 2  # both evict while the other reads
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        digests = pool.starmap(_read_digest, [(uri, options, folder, bound)] * 4)
    assert digests == [expected] * 4
    cache = ChunkCache(folder, max_bytes=bound)
    assert 0 < cache.size() <= bound
    assert not [p for p in _all_files(folder) if p.endswith(".partial")]


def test_a_chunk_rewritten_on_the_server_is_read_anew(logged_s3, tmp_path):
    """A shard number freed by `cache gc --collect` can hold new bytes later: the entry is named by the
    file's version, so the old bytes are never served for it."""
    import zarr

    uri, options, _ = logged_s3
    cache = ChunkCache(str(tmp_path / "cache"))
    store = open_store(uri, storage_options=options, cache=cache)
    space = store.space("vlcache-tiny")
    before = space.array("image_global")[:8]
    writable = zarr.open_array(store.location.zarr_store(f"spaces/{space.key}/embeddings.zarr/image_global",
                                                         read_only=False), mode="r+")
    writable[:8] = -before  # the same path, new bytes
    again = open_store(uri, storage_options=options, cache=cache).space("vlcache-tiny")
    np.testing.assert_array_equal(again.array("image_global")[:8], -before)


def test_train_takes_the_cache_from_the_environment(logged_s3, tmp_path, monkeypatch):
    uri, options, requests = logged_s3
    monkeypatch.setenv("VLCACHE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VLCACHE_CACHE_SIZE", "1GB")
    config = tmp_path / "tiny.json"
    config.write_text('{"head": {"width": 32, "layers": 1, "heads": 2}, "train": {"steps": 2, "batch_size": 8}}')
    args = ["train", "--store", uri, "--storage-options", __import__("json").dumps(options), "--dataset", "sc",
            "--head", "tflocal", "--config", str(config), "--split", "", "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "run1")]) == 0
    assert ChunkCache(str(tmp_path / "cache")).size() > 0
    requests.clear()
    assert main([*args, "--out", str(tmp_path / "run2")]) == 0
    assert chunk_gets(requests) == 0


@pytest.mark.parametrize("text, expected", [("20GB", 20 * 10**9), ("500 mb", 500 * 10**6), ("1.5GiB", 3 * 2**29),
                                            ("1024", 1024), ("2k", 2000)])
def test_sizes_read_as_people_write_them(text, expected):
    assert parse_size(text) == expected


def test_a_bad_size_is_one_line(capfd):
    assert main(["train", "--store", "x", "--dataset", "d", "--head", "tflocal", "--out", "o",
                 "--cache-size", "lots"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "'--cache-size': 'lots' is not a size" in err, err


def _all_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
