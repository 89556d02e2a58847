"""Store access: read-only opening, dataset conflicts, finding spaces, an S3-compatible server,
and an existing Dask scheduler."""

import json
import shutil

import numpy as np
import pytest
from distributed import LocalCluster

from cache_schemas import (
    SCHEMA_VERSION,
    DatasetConflictError,
    StoreNotFoundError,
    UnknownDatasetError,
    UnknownSpaceError,
    open_store,
    verify,
)
from cache_schemas.gc import collect, find_garbage, referenced
from cache_schemas.info import describe_store
from pipeline.cluster import ClusterConfig
from trainer.run import evaluate_head
from workflows.cli import main

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
    with pytest.raises(DatasetConflictError, match="already exists .* with different content.*--replace"):
        run_extract(tmp_path / "other.jsonl", "jsonl", "sc", tmp_path / "store")


def test_a_dataset_is_replaced_then_removed_and_its_embeddings_stay(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images)
    (tmp_path / "fixed.jsonl").write_text(json.dumps({"image": f"{images}/000000.png", "caption": "else"}) + "\n")
    summary = run_extract(tmp_path / "fixed.jsonl", "jsonl", "sc", tmp_path / "store", replace=True)
    assert summary.items == 1 and summary.images_encoded == 0 and summary.texts_encoded == 1
    store = open_store(tmp_path / "store", mode="a")
    assert store.dataset("sc").items.num_rows == 1
    (key,) = store.space_keys()
    space = describe_store(store)["spaces"][key]
    assert space["unreferenced"] == {"images": space["images"] - 1, "texts": space["texts"] - 1}
    store.remove_dataset("sc")
    assert store.dataset_names() == [] and not (tmp_path / "store/datasets/sc").exists()
    assert describe_store(store)["spaces"][key]["unreferenced"]["images"] == space["images"]
    assert verify(store).ok
    with pytest.raises(UnknownDatasetError):
        store.remove_dataset("sc")


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
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        summary = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images,
                              cluster=ClusterConfig(scheduler_address=cluster.scheduler_address))
    assert summary.images_encoded > 0 and verify(open_store(tmp_path / "store")).ok


def test_gc_collects_whole_shards_no_dataset_needs_and_their_content_can_come_back(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    path = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "sc", path, images_root=images)  # 8 rows per shard: several shards
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": f"{images}/000000.png", "caption": "its own"}) + "\n")
    run_extract(tmp_path / "one.jsonl", "jsonl", "one", path)
    store = open_store(path, mode="a")
    (key,) = store.space_keys()
    before = store.space(key)
    kept_image = store.dataset("one").images["hash"][0].as_py()
    reference = before.read("image_global", before.rows("images", [kept_image]))
    store.remove_dataset("sc")

    garbage, freed = collect(store, key)
    assert freed > 0 and garbage.shards["images"] and garbage.shards["texts"]
    after = open_store(path).space(key)
    assert verify(open_store(path)).ok
    assert set(after.committed_shards("images")) == {before.geometry.shard_of(int(before.rows("images",
                                                                                                [kept_image])[0]))}
    np.testing.assert_array_equal(after.read("image_global", after.rows("images", [kept_image])), reference)
    assert find_garbage(after, referenced(open_store(path))).shards == {"images": [], "texts": []}

    summary = run_extract(annotations, "sugarcrepe", "sc", path, images_root=images)  # brought back
    space = open_store(path).space(key)
    assert summary.images_encoded == summary.images - summary.images_present > 0
    assert verify(open_store(path)).ok
    for kind in ("images", "texts"):
        hashes = space.view(kind)["hash"].to_pylist()
        assert len(hashes) == len(set(hashes))


def test_the_index_gives_the_same_rows_as_the_parts_and_follows_collection(tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    path = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "sc", path, images_root=images)  # extract compacts as it finishes
    (key,) = open_store(path).space_keys()
    index = path / "spaces" / key / "index"
    assert sorted(p.name for p in index.iterdir()) == ["images-000001.parquet", "images.json",
                                                        "texts-000001.parquet", "texts.json"]
    indexed = {kind: open_store(path).space(key).view(kind).sort_by("row") for kind in ("images", "texts")}
    shutil.rmtree(index)  # a 1.0 store: every part read
    for kind, table in indexed.items():
        assert open_store(path).space(key).view(kind).sort_by("row").equals(table)

    assert main(["cache", "compact", str(path)]) == 0
    (tmp_path / "more.jsonl").write_text(json.dumps({"image": f"{images}/000000.png", "caption": "new"}) + "\n")
    run_extract(tmp_path / "more.jsonl", "jsonl", "more", path)  # a commit after the index was written...
    store = open_store(path, mode="a")
    store.remove_dataset("sc")
    collect(store, key)  # ...and shards collected: the index follows both
    space = open_store(path).space(key)
    assert space.view("texts")["text"].to_pylist() == ["new"]  # texts had shards of their own
    assert store.dataset("more").images["hash"][0].as_py() in space.view("images")["hash"].to_pylist()
    assert find_garbage(space, referenced(store)).shards == {"images": [], "texts": []}
    assert verify(open_store(path)).ok


def test_a_schema_1_2_index_is_read_then_taken_over_by_compact(tmp_path, small_sugarcrepe):
    """A 1.2 store's index is one file per kind, its shards in the footer: read as one segment, and
    listed by the manifest the next compaction writes (the store then says this vlcache's version)."""
    import pyarrow.parquet as pq

    annotations, images = small_sugarcrepe
    path = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "sc", path, images_root=images)
    (key,) = open_store(path).space_keys()
    before = {kind: open_store(path).space(key).view(kind).sort_by("row") for kind in ("images", "texts")}
    index = path / "spaces" / key / "index"
    for kind in ("images", "texts"):  # as a 1.2 writer left it
        rows = pq.read_table(index / f"{kind}-000001.parquet")
        shards = sorted(set((rows["row"].to_numpy() // 8).tolist()))
        pq.write_table(rows.replace_schema_metadata({"vlcache": json.dumps({"shards": shards})}),
                       index / f"{kind}.parquet")
        (index / f"{kind}-000001.parquet").unlink()
        (index / f"{kind}.json").unlink()
    manifest = json.loads((path / "vlcache.json").read_text())
    (path / "vlcache.json").write_text(json.dumps({**manifest, "schema_version": "1.2"}))
    space = open_store(path).space(key)
    assert space.indexed_shards("images") == set(space.committed_shards("images"))
    for kind, table in before.items():
        assert space.view(kind).sort_by("row").equals(table)
    assert main(["cache", "compact", str(path)]) == 0
    assert json.loads((index / "images.json").read_text())["segments"][0]["file"] == "images.parquet"
    assert json.loads((path / "vlcache.json").read_text())["schema_version"] == SCHEMA_VERSION
    for kind, table in before.items():
        assert open_store(path).space(key).view(kind).sort_by("row").equals(table)
    assert verify(open_store(path)).ok


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_read_check_finds_zero_and_non_finite_rows_from_the_bits(dtype):
    from cache_schemas.embeddings import _zero_or_non_finite_rows

    rows = np.ones((7, 3, 4), dtype=dtype)
    rows[1] = 0
    rows[2] = -0.0  # a negative zero is still a zero row
    rows[3, 1, 2] = np.inf
    rows[4, 0, 0] = -np.inf
    rows[5, 2, 3] = np.nan
    rows[6] = np.finfo(dtype).smallest_subnormal  # tiny, but a number
    assert _zero_or_non_finite_rows(rows).tolist() == [False, True, True, True, True, True, False]


def test_a_reader_whose_index_segment_a_compaction_retired_reads_the_new_manifest(tmp_path):
    """A reader keeps the manifest it read; a writer that merges segments meanwhile removes the ones it
    merged. The reader's next lookup finds a segment gone, reloads the manifest once, and reads on."""
    from PIL import Image

    store = tmp_path / "store"
    hashes = []
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.jsonl").write_text(json.dumps({"image": str(tmp_path / f"{i}.png"), "caption": f"c{i}"}))
        if i == 1:
            reader = open_store(store).space("vlcache-tiny")
            assert reader.ledger.segments("images")  # the manifest as it was
        run_extract(tmp_path / f"{i}.jsonl", "jsonl", f"d{i}", store)  # the second merges the first's segment
        hashes.append(open_store(store).dataset(f"d{i}").images["hash"][0].as_py())
    assert not (store / "spaces" / reader.key / "index" / "images-000001.parquet").exists()
    assert (reader.rows("images", hashes[:1]) >= 0).all()


def test_a_flipped_byte_that_zstd_still_decodes_is_caught_at_the_read(small_store, tmp_path):
    """Since schema 1.5 each chunk ends with its crc32c: a byte flipped where zstd alone decodes the chunk to
    other numbers (finite, non-zero: the read check passes them) is a damaged-store error at the read."""
    import numcodecs

    from cache_schemas.errors import DamagedStoreError

    path = tmp_path / "store"
    shutil.copytree(small_store, path)
    array = open_store(path).space("vlcache-tiny").array("image_patches")
    assert [c.to_dict()["name"] for c in array.metadata.codecs[0].codecs] == ["bytes", "zstd", "crc32c"]
    shard = next((path / "spaces").iterdir()) / "embeddings.zarr" / "image_patches" / "c" / "0" / "0" / "0"
    blob = shard.read_bytes()
    offset, nbytes = (int(v) for v in np.frombuffer(blob[-20:-4], "<u8"))  # the index: one chunk a shard here
    payload, zstd = blob[offset:offset + nbytes - 4], numcodecs.Zstd()  # the chunk without its crc32c
    for at in range(len(payload) // 2, len(payload)):
        flipped = bytearray(payload)
        flipped[at] ^= 0x5A
        try:
            if zstd.decode(bytes(flipped)) != zstd.decode(payload):
                break
        except RuntimeError:  # zstd itself noticed: look for a flip it does not
            continue
    else:
        pytest.fail("no byte of the chunk decodes to other numbers when flipped")
    shard.write_bytes(blob[:offset + at] + bytes(flipped[at:at + 1]) + blob[offset + at + 1:])
    with pytest.raises(DamagedStoreError, match="image_patches, shard 0 and after: a chunk cannot be decoded"):
        open_store(path).space("vlcache-tiny").read("image_patches", np.arange(array.chunks[0]))
