"""Extraction end to end through a real Dask scheduler and a real Zarr store on disk."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from cache_schemas import open_store, verify
from pipeline.cluster import ClusterConfig
from pipeline.encoders import load_encoder
from pipeline.images import ImageError, decode, read_bytes
from pipeline.preprocess import ImageSteps
from workflows.cli import main
from workflows.examples import SUGARCREPE_SIZES, write_sugarcrepe_example

from .conftest import run_extract


@pytest.fixture(scope="module")
def full_sugarcrepe(tmp_path_factory):
    """All 7 subsets at the real benchmark's sizes (7,511 items), sharing 900 images."""
    root = tmp_path_factory.mktemp("sugarcrepe-full")
    annotations, images = write_sugarcrepe_example(str(root), sizes=SUGARCREPE_SIZES, n_images=900, image_size=32)
    store = root / "store"
    summary = run_extract(annotations, "sugarcrepe", "sugarcrepe", store, rows_per_shard=256, batch_size=128,
                          images_root=images)
    return annotations, images, store, summary


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_full_sugarcrepe_stores_each_unique_image_and_caption_once(full_sugarcrepe, capsys):
    annotations, _, store, summary = full_sugarcrepe
    entries = {f: _load(os.path.join(annotations, f)) for f in os.listdir(annotations)}
    unique_files = {e["filename"] for subset in entries.values() for e in subset.values()}
    unique_texts = {e[k] for subset in entries.values() for e in subset.values()
                    for k in ("caption", "negative_caption")}
    assert sum(len(s) for s in entries.values()) == 7511

    assert main(["cache", "info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (space,) = info["spaces"].values()
    assert info["unique"] == {"items": 7511, "images": len(unique_files), "texts": len(unique_texts)}
    assert (space["images"], space["texts"]) == (len(unique_files), len(unique_texts))
    assert space["datasets"]["sugarcrepe"] == {"images": len(unique_files), "texts": len(unique_texts)}
    assert (summary.images_encoded, summary.texts_encoded) == (len(unique_files), len(unique_texts))
    assert sorted(info["datasets"]["sugarcrepe"]["subsets"]) == sorted(SUGARCREPE_SIZES)
    # Bytes without listing a chunk file: the committed rows' own size; --disk adds what is on disk.
    opened = open_store(store).space("vlcache-tiny")
    width = opened.spec.dims["embed_dim"] * 2  # float16
    assert space["bytes"]["committed"]["image_global"] == len(unique_files) * width
    assert space["bytes"]["committed"]["text_tokens"] == (
        int(opened.texts()["n_tokens"].to_numpy().sum()) * opened.spec.text_token_dim * 2)
    assert "on_disk" not in space["bytes"]
    assert main(["cache", "info", str(store), "--json", "--disk"]) == 0
    on_disk = json.loads(capsys.readouterr().out)["spaces"][opened.key]["bytes"]["on_disk"]
    assert 0 < on_disk["total"] == sum(v for k, v in on_disk.items() if k != "total")


def test_items_reference_their_own_image_and_captions(full_sugarcrepe):
    annotations, images, store, _ = full_sugarcrepe
    dataset = open_store(store).dataset("sugarcrepe")
    space = open_store(store).space("vlcache-tiny")
    uri_of = dict(zip(dataset.images["hash"].to_pylist(), dataset.images["uri"].to_pylist()))
    text_of = dict(zip(space.texts()["hash"].to_pylist(), space.texts()["text"].to_pylist()))
    items = {row["item_id"]: row for row in dataset.items.to_pylist()}
    for subset in ("swap_att", "add_obj"):
        source = _load(os.path.join(annotations, f"{subset}.json"))
        for key, entry in list(source.items())[:50]:
            item = items[f"{subset}/{key}"]
            assert os.path.basename(uri_of[item["image"]]) == entry["filename"]
            assert text_of[item["caption"]] == entry["caption"]
            assert [text_of[h] for h in item["negative_captions"]] == [entry["negative_caption"]]
            assert (item["subset"], item["type"], item["subtype"]) == (subset, *subset.split("_"))


def test_stored_embeddings_equal_a_direct_encoder_pass(full_sugarcrepe):
    _, _, store, _ = full_sugarcrepe
    space = open_store(store).space("vlcache-tiny")
    images, texts = space.images().slice(0, 5), space.texts().slice(0, 5)
    encoder = load_encoder(space.spec)
    pixels = torch.stack([encoder.preprocess(decode(read_bytes(u), 64)) for u in images["uri"].to_pylist()])
    direct = encoder.encode_images(pixels)
    for name in ("image_patches", "image_cls", "image_global"):
        np.testing.assert_allclose(space.read(name, images["row"].to_numpy()), direct[name], atol=2e-3)
    ids, n = encoder.tokenize(texts["text"].to_pylist())
    tokens, pooled = encoder.encode_texts(ids, n)
    stored, mask = space.read_tokens_padded(texts["row"].to_numpy())
    np.testing.assert_array_equal(mask.sum(1), n)
    for i, t in enumerate(tokens):
        np.testing.assert_allclose(stored[i, : len(t)], t, atol=2e-3)
    np.testing.assert_allclose(space.read("text_global", texts["row"].to_numpy()), pooled, atol=2e-3)


def test_text_tokens_are_ragged_not_padded(full_sugarcrepe):
    _, _, store, _ = full_sugarcrepe
    space = open_store(store).space("vlcache-tiny")
    texts = space.texts()
    real_tokens = int(pc.sum(texts["n_tokens"]).as_py())
    dim, context = space.spec.text_token_dim, space.spec.context_length
    # Each shard's token rows are exactly its texts' real tokens, back to back.
    for shard in space.committed_shards("texts"):
        part, meta = space.part("texts", shard)
        start, stop = meta["token_rows"]
        assert stop - start == int(pc.sum(part["n_tokens"]).as_py())
        assert part["offset"].to_pylist()[0] == start
    # Bytes on disk track real tokens (zstd may shrink repeated causal prefixes further), far below padding.
    stored = space.nbytes_stored()["text_tokens"]
    assert stored < 1.1 * real_tokens * dim * 2
    assert stored < 0.25 * texts.num_rows * context * dim * 2


def test_extracting_again_encodes_nothing(small_sugarcrepe, tmp_path):
    annotations, images = small_sugarcrepe
    first = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images)
    again = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images)
    assert first.images_encoded == first.images > 0 and first.texts_encoded == first.texts > 0
    assert (again.images_encoded, again.texts_encoded, again.shards_run) == (0, 0, 0)
    assert (again.images_present, again.texts_present) == (first.images, first.texts)


def test_a_rerun_reads_no_image_file_unchanged_since_it_was_hashed(small_sugarcrepe, tmp_path):
    """Size and modification time as the last run saw them: the hash is trusted, the file not read.
    A file touched since is read again (its content, here the same, decides); --rehash reads all."""
    import shutil

    annotations, images = small_sugarcrepe
    root = tmp_path / "images"
    shutil.copytree(images, root)
    first = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=str(root))
    assert (first.images_read, first.images_trusted) == (first.images, 0)
    again = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=str(root))
    assert (again.images_read, again.images_trusted) == (0, first.images)
    assert "hashed 0 images; 11 unchanged since the last run, not read again" in "\n".join(again.lines())
    touched = sorted(root.iterdir())[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=str(root))
    assert (third.images_read, third.images_trusted) == (1, first.images - 1)
    assert third.images_encoded == 0  # the same bytes: the same hash, nothing to encode
    rehashed = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=str(root), rehash=True)
    assert (rehashed.images_read, rehashed.images_trusted) == (first.images, 0)


def test_a_changed_file_is_read_again_and_its_new_content_encoded(tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": str(tmp_path / "a.png"), "caption": "a square"}) + "\n")
    run_extract(tmp_path / "a.jsonl", "jsonl", "a", tmp_path / "store")
    Image.new("RGB", (16, 24), "blue").save(tmp_path / "a.png")  # another size: the stamp changes
    changed = run_extract(tmp_path / "a.jsonl", "jsonl", "a", tmp_path / "store", replace=True)
    assert (changed.images_read, changed.images_encoded) == (1, 1)
    assert open_store(tmp_path / "store").dataset("a").images["height"].to_pylist() == [24]


def test_one_extraction_reads_each_plan_file_once(small_sugarcrepe, tmp_path, monkeypatch):
    """The ledger reads plan files' footers when the space is opened, and their rows in one scan:
    planning, resuming and encoding read nothing again."""
    from collections import Counter

    from cache_schemas import ledger

    annotations, images = small_sugarcrepe
    run_extract(annotations, "sugarcrepe", "a", tmp_path / "store", images_root=images)
    (tmp_path / "b.jsonl").write_text(json.dumps({"image": f"{images}/000000.png", "caption": "new"}) + "\n")
    run_extract(tmp_path / "b.jsonl", "jsonl", "b", tmp_path / "store")  # a second texts plan (its image is there)
    footers, rows = Counter(), Counter()
    real_range, real_batches = ledger._row_range, ledger.Ledger.batches

    def counted_range(location, rel):
        if "/plans/" in rel:
            footers[rel] += 1
        return real_range(location, rel)

    def counted_batches(self, rel, schema, what):
        if "/plans/" in rel:
            rows[rel] += 1
        return real_batches(self, rel, schema, what)

    monkeypatch.setattr(ledger, "_row_range", counted_range)
    monkeypatch.setattr(ledger.Ledger, "batches", counted_batches)
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": f"{images}/000001.png", "caption": "newer"}) + "\n")
    summary = run_extract(tmp_path / "c.jsonl", "jsonl", "c", tmp_path / "store")
    assert summary.texts_encoded == 1
    plans = [f"plans/{n}" for n in os.listdir(tmp_path / "store" / "spaces" / summary.space / "plans")]
    assert len(plans) == 4  # images: 1, texts: 3 (this run's is written, never read)
    assert all(n == 1 for n in footers.values()) and all(n == 1 for n in rows.values()), (footers, rows)
    assert len(footers) == 3 and len(rows) == 3


def test_the_index_stays_a_few_segments_and_equals_the_parts(tmp_path):
    """Each extraction indexes its own commits in a new segment; the newest merge while they are of a
    size, so twenty extractions leave a handful of segments, with exactly the parts' rows."""
    from PIL import Image

    from cache_schemas.layout import index_manifest

    store = tmp_path / "store"
    for i in range(20):
        Image.new("RGB", (16, 16), (i * 10, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.jsonl").write_text(json.dumps({"image": str(tmp_path / f"{i}.png"), "caption": f"c{i}"}))
        run_extract(tmp_path / f"{i}.jsonl", "jsonl", f"d{i}", store)
    space = open_store(store).space("vlcache-tiny")
    segments = json.loads((store / index_manifest(space.key, "images")).read_text())["segments"]
    assert 1 <= len(segments) <= 5 and sum(s["rows"] for s in segments) == 20
    assert (store / "spaces" / space.key / "index").glob("images-*.parquet")
    from_parts = pa.concat_tables([space.part("images", s)[0] for s in space.listed_shards("images")])
    assert space.committed_rows("images").sort_by("row").equals(from_parts.sort_by("row"))
    assert len(list((store / "spaces" / space.key / "index").glob("images-*.parquet"))) == len(segments)


def test_a_second_dataset_encodes_only_new_content(tmp_path):
    _, images = write_sugarcrepe_example(str(tmp_path / "src"), sizes={"swap_att": 1}, n_images=10)
    rows = [{"image": f"{i:06d}.png", "caption": f"picture number {i}"} for i in range(10)]
    first, second = rows[:6], rows[3:]  # three images and texts shared
    for name, part in (("first", first), ("second", second)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    store = tmp_path / "store"
    run_extract(tmp_path / "first.jsonl", "jsonl", "first", store, images_root=images)
    summary = run_extract(tmp_path / "second.jsonl", "jsonl", "second", store, images_root=images)
    assert (summary.images, summary.images_present, summary.images_encoded) == (7, 3, 4)
    assert (summary.texts, summary.texts_present, summary.texts_encoded) == (7, 3, 4)
    space = open_store(store).space("vlcache-tiny")
    assert space.images().num_rows == 10 and space.texts().num_rows == 10
    assert verify(open_store(store)).ok


def test_new_content_never_shares_a_zarr_shard_with_committed_rows(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    store = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "a", store, rows_per_shard=8, images_root=images)
    rows = [{"image": os.path.join(images, "000000.png"), "caption": "a caption never seen before"}]
    with open(tmp_path / "b.jsonl", "w") as f:
        f.write(json.dumps(rows[0]) + "\n")
    run_extract(tmp_path / "b.jsonl", "jsonl", "b", store)
    texts = open_store(store).space("vlcache-tiny").texts()
    new_row = texts.filter(pc.equal(texts["text"], "a caption never seen before"))["row"][0].as_py()
    older = texts.filter(pc.not_equal(texts["text"], "a caption never seen before"))["row"].to_numpy()
    assert new_row % 8 == 0 and new_row > older.max()


def test_images_inside_parquet_and_tar_hash_and_dedup_exactly_like_files(tmp_path):
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    red, blue = png("red"), png("blue")
    (tmp_path / "red.png").write_bytes(red)
    (tmp_path / "files.jsonl").write_text(json.dumps({"image": str(tmp_path / "red.png"), "caption": "red"}) + "\n")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": red, "path": None}, {"bytes": blue, "path": None},
                                                {"bytes": b"not an image", "path": None}], struct),
                             "caption": ["a red square", "a blue square", "broken"]}), tmp_path / "bytes.parquet")
    with tarfile.open(tmp_path / "000.tar", "w") as tar:
        for name, data in (("a.png", red), ("a.txt", b"red in a tar"), ("b.png", blue)):  # b has no caption
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = tmp_path / "store"
    run_extract(tmp_path / "files.jsonl", "jsonl", "files", store)
    second = run_extract(tmp_path / "bytes.parquet", "parquet", "table", store)
    third = run_extract(tmp_path / "000.tar", "webdataset", "shards", store)
    opened = open_store(store)
    space = opened.space("vlcache-tiny")
    assert len(space.images()) == 2  # red once, whether it came from a file, a Parquet cell or a tar member
    assert second.images_present == 1 and second.images_encoded == 1 and second.failed == 1
    assert third.images_present == 1 and third.images_encoded == 0
    errors = opened.dataset("table").errors.to_pylist()
    assert [e["stage"] for e in errors] == ["decode"] and errors[0]["source"].startswith("table://")
    skipped = opened.dataset("shards").errors.to_pylist()
    assert [(e["stage"], e["message"]) for e in skipped] == [("source", "no caption (.txt, or a .json with a caption)")]
    assert verify(opened).ok


def test_decoding_in_processes_stores_the_same_bits_and_errors_as_threads(tmp_path, small_sugarcrepe):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    annotations, images = small_sugarcrepe
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, format="PNG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # its header reads: it fails only to decode
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"image": [truncated, buffer.getvalue()], "caption": ["truncated", "whole"]}), broken)
    spaces = []
    # decode threads; 2 decode processes; the same with 2 worker threads sharing one pool of them
    for processes, threads in ((0, 1), (2, 1), (2, 2)):
        store = tmp_path / f"store-{processes}-{threads}"
        cluster = ClusterConfig(threads_per_worker=threads, processes=False)
        run_extract(annotations, "sugarcrepe", "sc", store, images_root=images, decode_processes=processes,
                    cluster=cluster)
        assert run_extract(broken, "parquet", "broken", store, decode_processes=processes, cluster=cluster).failed == 1
        spaces.append(open_store(store).space("vlcache-tiny"))
    a = spaces[0]
    assert a.errors()["stage"].to_pylist() == ["decode"]
    for b in spaces[1:]:
        assert a.images().equals(b.images()) and a.errors().equals(b.errors())
        for name in a.arrays("images"):
            rows = a.images()["row"].to_numpy()
            assert np.array_equal(a.read(name, rows), b.read(name, rows))


def test_a_dead_decode_process_fails_its_batch_and_the_next_shard_gets_a_new_pool(tmp_path, small_sugarcrepe):
    from concurrent.futures.process import BrokenProcessPool

    from pipeline import decoding, shards

    annotations, images = small_sugarcrepe
    store = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "sc", store, images_root=images)
    space = open_store(store).space("vlcache-tiny")
    encoder = load_encoder(space.spec, None, "cpu")
    shards._decoder(encoder, 2)
    dying = next(iter(decoding._PROCESS_POOLS.values())).submit(os._exit, 1)  # a decode process killed
    with pytest.raises(BrokenProcessPool):
        shards._ready(([0], [dying]), shards.Stages())
    assert not decoding._PROCESS_POOLS
    first = space.images().slice(0, 1)
    decode_image = shards._decoder(encoder, 2)
    pixels = shards._pixels(decode_image([first["uri"][0].as_py()], [first["hash"][0].as_py()])[0].result()[0])
    expected = encoder.preprocess(decode(read_bytes(first["uri"][0].as_py()), encoder.image_size))
    assert torch.equal(pixels, expected)
    decoding.close_process_pools()


def test_decode_processes_never_import_torch(tmp_path, small_sugarcrepe):
    """They fork from a server that preloads only the decoding module and the image steps: they start
    in a fraction of a second, and give the pixels decode threads give."""
    from pipeline import decoding

    annotations, images = small_sugarcrepe
    store = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "sc", store, images_root=images)
    space = open_store(store).space("vlcache-tiny")
    encoder = load_encoder(space.spec, None, "cpu")
    decode_image = decoding.process_decoder("torch-free", 1, type(encoder).image_transform(space.spec),
                                            encoder.image_size)
    try:
        pool = decoding._PROCESS_POOLS["torch-free", 1]
        assert pool.submit(eval, "sorted({'torch', 'open_clip'} & set(__import__('sys').modules))").result() == []
        first = space.images().slice(0, 1)
        uri, digest = first["uri"][0].as_py(), first["hash"][0].as_py()
        expected = encoder.preprocess(decode(read_bytes(uri), encoder.image_size))
        assert np.array_equal(decode_image([uri], [digest])[0].result()[0], expected.numpy())
    finally:
        decoding.close_process_pools()


def test_decode_tasks_of_several_images_keep_the_order_and_each_images_error(tmp_path):
    import hashlib

    from PIL import Image

    from pipeline import decoding

    uris, hashes = [], []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40 + i, 30), (30 * i, 0, 0)).save(path)
        uris.append(str(path))
        hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
    hashes[4] = "0" * 64  # as if the file changed since it was hashed
    steps = ImageSteps((32, 32), "shortest")
    by_threads = [x for f in decoding.thread_decoder(steps, 32)(uris, hashes) for x in f.result()]
    try:
        futures = decoding.process_decoder("order", 2, steps, 32, images_per_task=3)(uris, hashes)
        by_processes = [x for f in futures for x in f.result()]
    finally:
        decoding.close_process_pools()
    assert len(futures) == 3 and isinstance(by_threads[4], ImageError)
    assert by_processes[4] == (by_threads[4].stage, str(by_threads[4]))
    assert all(np.array_equal(a, b) for i, (a, b) in enumerate(zip(by_threads, by_processes)) if i != 4)


def test_an_image_the_steps_cannot_scale_is_an_error_record(tmp_path):
    import hashlib

    from PIL import Image

    from pipeline.decoding import load
    from pipeline.images import ImageError

    strip = tmp_path / "strip.png"
    Image.new("RGB", (500, 1)).save(strip)
    digest = hashlib.sha256(strip.read_bytes()).hexdigest()
    loaded = load(ImageSteps((64, 64), "longest"), 64, str(strip), digest)  # its height scales to 0
    assert isinstance(loaded, ImageError) and loaded.stage == "decode" and "500x1" in str(loaded)


def test_decoding_defaults_to_processes_where_a_gpu_encodes_and_to_threads_on_a_cpu():
    from pipeline.shards import ShardTask, _decode_processes

    def task(processes, cores):
        return ShardTask(None, "k", "images", 0, None, None, decode_processes=processes, worker_cores=cores)

    assert _decode_processes(task(None, 16), "cuda") == 14  # two cores stay for encoding and writing
    assert _decode_processes(task(None, 2), "cuda") == 2
    assert _decode_processes(task(None, 16), "cpu") == 0
    assert _decode_processes(task(3, 16), "cpu") == 3 and _decode_processes(task(0, 16), "cuda") == 0
    assert ClusterConfig().for_device(gpu=True).threads_per_worker == 2
    assert ClusterConfig().for_device(gpu=False).threads_per_worker == 1
    assert ClusterConfig(threads_per_worker=3).for_device(gpu=True).threads_per_worker == 3
    from pipeline.decoding import _task_size

    assert _task_size(256, 14) == 4 and _task_size(256, 2) == 8 and _task_size(5, 2) == 1  # four tasks a process


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs CPU affinity")
def test_decode_threads_and_local_workers_count_the_cores_a_job_may_use_not_the_machines():
    import subprocess
    import sys

    probe = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "  # a one-core job's share
             "from pipeline import decoding; from pipeline.cluster import ClusterConfig; "
             "print(decoding.usable_cores(), decoding.DECODE_THREADS, ClusterConfig(workers=1).cores_per_worker())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "4", "1"]  # four decode threads is the floor, whatever the machine has


def test_a_slurm_jobs_booking_caps_the_cores_and_a_remote_worker_gives_torch_its_share(monkeypatch):
    """SLURM without CPU binding leaves the affinity open; SLURM_CPUS_PER_TASK is the job's share. A
    remote worker's torch takes that share over the worker's threads (Dask's nanny would leave it one)."""
    from distributed import Client, LocalCluster

    from pipeline.decoding import usable_cores
    from pipeline.shards import ShardTask, _torch_threads

    machine = usable_cores()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cores() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(machine + 5))
    assert usable_cores() == machine  # a booking beyond the affinity counts the affinity
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    task = ShardTask(None, "k", "images", 0, None, None, torch_threads=None)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            assert client.submit(_torch_threads, task).result() == max(1, machine // 2)
    assert _torch_threads(ShardTask(None, "k", "images", 0, None, None, torch_threads=3)) == 3  # local: as told
