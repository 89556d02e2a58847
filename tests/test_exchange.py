"""Export of a dataset with its embeddings (HDF5, clip-retrieval) and import of an HDF5 export into a
store, on a real store made by the normal extraction path."""

import json
import os
import shutil

import faiss
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cache_schemas import SCHEMA_VERSION, open_store, tables, verify
from cache_schemas.exchange import ExportFile
from cache_schemas.h5table import read_table, write_table
from pipeline import importer
from pipeline.importer import import_hdf5
from workflows.cli import main

from .conftest import run_extract

TABLE_NAMES = ("items", "images", "texts", "errors")


@pytest.fixture(scope="module")
def exported(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "sc.h5"
    assert main(["cache", "export", str(small_store), "--dataset", "sc", "--format", "hdf5", str(out)]) == 0
    return out


def _assert_same_dataset_and_rows(old_store, new_store, name="sc", new_name=None, only=None):
    """Equal tables, and equal arrays for every hash of the dataset (or those of `only`), read with the
    store API."""
    old, new = open_store(str(old_store)), open_store(str(new_store))
    before, after = old.dataset(name), new.dataset(new_name or name)
    for table in TABLE_NAMES:
        assert getattr(after, table).equals(getattr(before, table)), table
    assert after.manifest["fingerprint"] == before.manifest["fingerprint"]
    a, b = old.space("vlcache-tiny"), new.space("vlcache-tiny")
    assert a.key == b.key
    images, texts = before.images["hash"].to_pylist(), before.texts["hash"].to_pylist()
    if only is not None:
        images, texts = [h for h in images if h in only["images"]], [h for h in texts if h in only["texts"]]
    rows_a, rows_b = a.rows("images", images), b.rows("images", images)
    assert (rows_a >= 0).all() and (rows_b >= 0).all()
    for array in a.arrays("images"):
        np.testing.assert_array_equal(a.read(array, rows_a), b.read(array, rows_b))
    rows_a, rows_b = a.rows("texts", texts), b.rows("texts", texts)
    assert (rows_a >= 0).all() and (rows_b >= 0).all()
    np.testing.assert_array_equal(a.read("text_global", rows_a), b.read("text_global", rows_b))
    tokens_a, lengths_a = a.read_tokens(rows_a)
    tokens_b, lengths_b = b.read_tokens(rows_b)
    np.testing.assert_array_equal(lengths_a, lengths_b)
    np.testing.assert_array_equal(tokens_a, tokens_b)
    report = verify(new)
    assert report.ok, report.problems


def _files(root):
    """Every file under root with its size and modification time: what a write would change."""
    return {os.path.relpath(os.path.join(d, n), root): (os.stat(os.path.join(d, n)).st_size,
                                                         os.stat(os.path.join(d, n)).st_mtime_ns)
            for d, _, names in os.walk(root) for n in names}


def test_round_trip_through_hdf5_gives_equal_tables_and_arrays(small_store, exported, tmp_path, capfd):
    copy = tmp_path / "copy"
    assert main(["cache", "import", str(exported), "--store", str(copy)]) == 0
    out = capfd.readouterr().out
    assert "imported dataset sc" in out and "wrote 11 images and 42 texts" in out, out
    _assert_same_dataset_and_rows(small_store, copy)


def test_export_and_import_a_row_at_a_time_give_the_same_file_and_store(small_store, exported, tmp_path, monkeypatch):
    """Blocks of one row: every block and window boundary is crossed, and the result is the same."""
    from cache_schemas import exchange

    monkeypatch.setattr(exchange, "BLOCK_BYTES", 1)
    out = tmp_path / "small-blocks.h5"
    exchange.export_hdf5(open_store(str(small_store)), "sc", None, str(out))
    with h5py.File(exported, "r") as a, h5py.File(out, "r") as b:
        for name in ("image_patches", "image_cls", "image_global", "text_global", "text_tokens/values"):
            np.testing.assert_array_equal(a["embeddings"][name][()], b["embeddings"][name][()])
    import_hdf5(str(out), str(tmp_path / "copy"))
    _assert_same_dataset_and_rows(small_store, tmp_path / "copy")


def test_a_store_made_by_import_needs_no_encoding_when_the_source_is_extracted(
        small_store, exported, small_sugarcrepe, tmp_path):
    annotations, images = small_sugarcrepe
    import_hdf5(str(exported), str(tmp_path / "copy"))
    summary = run_extract(annotations, "sugarcrepe", "sc", tmp_path / "copy", images_root=images)
    assert summary.shards_run == 0 and summary.images_encoded == summary.texts_encoded == 0
    assert (summary.images_present, summary.texts_present) == (summary.images, summary.texts)


def test_the_file_has_the_documented_layout_in_plain_h5py(small_store, exported):
    with h5py.File(exported, "r") as f:  # only h5py and numpy from here to the end of the block
        attrs = f.attrs
        assert attrs["format"] == "vlcache-export" and attrs["export_version"] == 1
        assert attrs["schema_version"] == SCHEMA_VERSION and attrs["dataset"] == "sc" and attrs["vlcache_version"]
        spec = json.loads(attrs["space"])
        assert spec["key"] == attrs["space_key"] and json.loads(attrs["geometry"])["rows_per_shard"] == 8
        items = f["tables/items"]
        n_items = int(items.attrs["num_rows"])
        assert json.loads(items.attrs["columns"])[:2] == ["item_id", "subset"]
        captions = items["caption"].asstr()[()]
        negatives = items["negative_captions/offsets"][()]
        negative_values = items["negative_captions/values"].asstr()[()]
        assert len(captions) == n_items and negatives.shape == (n_items + 1,) and negatives[-1] == len(negative_values)
        text_of = dict(zip(f["tables/texts/hash"].asstr()[()], f["tables/texts/text"].asstr()[()]))

        emb = f["embeddings"]
        image_hash, text_hash = emb["image_hash"].asstr()[()], emb["text_hash"].asstr()[()]
        n, m = len(image_hash), len(text_hash)
        p, d, e, dt = (spec["dims"][k] for k in ("patches", "patch_dim", "embed_dim", "text_dim"))
        assert emb["image_patches"].shape == (n, p, d) and emb["image_cls"].shape == (n, d)
        assert emb["image_global"].shape == (n, e) and emb["text_global"].shape == (m, e)
        offsets = emb["text_tokens/offsets"][()]
        assert offsets.shape == (m + 1,) and offsets[0] == 0 and (np.diff(offsets) > 0).all()
        assert emb["text_tokens/values"].shape == (offsets[-1], dt)
        for name in ("image_patches", "image_global", "text_global", "text_tokens/values"):
            assert emb[name].dtype == np.float16 and emb[name].compression == "gzip" and emb[name].chunks
        assert set(items["image"].asstr()[()]) <= set(image_hash) and set(captions) <= set(text_hash)
        first_caption = int(np.flatnonzero(text_hash == captions[0])[0])
        caption_tokens = emb["text_tokens/values"][offsets[first_caption]:offsets[first_caption + 1]]
        image_global = emb["image_global"][()]
        patches_of_last = emb["image_patches"][n - 1]

    store = open_store(str(small_store))
    space = store.space(spec["key"])
    np.testing.assert_array_equal(image_global, space.read("image_global", space.rows("images", list(image_hash))))
    last = space.rows("images", [image_hash[-1]])
    np.testing.assert_array_equal(patches_of_last, space.read("image_patches", last)[0])
    tokens, _ = space.read_tokens(space.rows("texts", [captions[0]]))
    np.testing.assert_array_equal(caption_tokens, tokens)
    assert text_of[captions[0]] == store.dataset("sc").texts.filter(
        pa.compute.equal(store.dataset("sc").texts["hash"], captions[0]))["text"][0].as_py()


def _clip_export(small_store, out, *args):
    return main(["cache", "export", str(small_store), "--dataset", "sc", "--format", "clip-retrieval", str(out), *args])


def _collection(root, sub):
    """A collection's embeddings and metadata, partitions in name order, as autofaiss and clip back read them."""
    parts, metadata = sorted((root / sub).glob("*.npy")), sorted((root / "metadata").glob("*.parquet"))
    assert [p.stem.rsplit("_", 1)[1] for p in parts] == [m.stem.rsplit("_", 1)[1] for m in metadata]
    return np.concatenate([np.load(p) for p in parts]), pa.concat_tables([pq.read_table(m) for m in metadata])


@pytest.fixture(scope="module")
def clip_export(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "clip"
    assert _clip_export(small_store, out, "--space", "vlcache-tiny") == 0
    return out


def test_clip_retrieval_has_a_row_per_unique_image_and_caption_beside_its_metadata(small_store, clip_export):
    store = open_store(str(small_store))
    data, space = store.dataset("sc"), store.space("vlcache-tiny")
    items = {row["item_id"]: row for row in data.items.to_pylist()}
    images = {row["image"] for row in items.values()}
    captions = {row["caption"] for row in items.values()}
    assert len(items) > len(images), "items share images: the export must not repeat them"
    assert sorted(os.listdir(clip_export)) == ["images", "texts"]
    assert (clip_export / "images/img_emb/img_emb_0.npy").is_file()
    assert (clip_export / "texts/text_emb/text_emb_0.npy").is_file()
    image_emb, image_meta = _collection(clip_export / "images", "img_emb")
    text_emb, text_meta = _collection(clip_export / "texts", "text_emb")
    assert image_meta["image_hash"].to_pylist() == sorted(images, key=lambda h: space.rows("images", [h])[0])
    assert text_meta.num_rows == len(set(text_meta["caption_hash"].to_pylist())) == len(captions)
    assert set(text_meta["caption_hash"].to_pylist()) == captions
    assert image_emb.dtype == text_emb.dtype == np.dtype(space.spec.dtype)
    np.testing.assert_array_equal(image_emb, space.read("image_global", space.rows(
        "images", image_meta["image_hash"].to_pylist())))
    np.testing.assert_array_equal(text_emb, space.read("text_global", space.rows(
        "texts", text_meta["caption_hash"].to_pylist())))
    text_of = dict(zip(data.texts["hash"].to_pylist(), data.texts["text"].to_pylist()))
    uri_of = dict(zip(data.images["hash"].to_pylist(), data.images["uri"].to_pylist()))
    for row in image_meta.to_pylist():  # an image's caption is its first item's
        assert {items[i]["image"] for i in row["item_ids"]} == {row["image_hash"]}
        assert row["image_path"] == uri_of[row["image_hash"]] and os.path.isfile(row["image_path"])
        assert row["caption"] == text_of[items[row["item_ids"][0]]["caption"]]
    for row in text_meta.to_pylist():  # a caption's image is its first item's
        assert {items[i]["caption"] for i in row["item_ids"]} == {row["caption_hash"]}
        assert row["caption"] == text_of[row["caption_hash"]]
        assert row["image_path"] == uri_of[items[row["item_ids"][0]]["image"]]
    assert sorted(i for ids in image_meta["item_ids"].to_pylist() for i in ids) == sorted(items)
    assert "url" not in image_meta.column_names and "key" not in text_meta.column_names  # SugarCrepe has neither


def test_faiss_indexes_built_from_the_exported_folders_find_each_row_and_its_metadata(small_store, clip_export):
    """What autofaiss does with a folder of .npy partitions, with faiss itself (autofaiss pins numpy<2)."""
    space = open_store(str(small_store)).space("vlcache-tiny")
    for folder, sub, hashes, kind in (("images", "img_emb", "image_hash", "images"),
                                      ("texts", "text_emb", "caption_hash", "texts")):
        embeddings = np.concatenate([np.load(p) for p in sorted((clip_export / folder / sub).glob("*.npy"))])
        metadata = pq.ParquetDataset(clip_export / folder / "metadata").read()
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings.astype(np.float32))
        _, found = index.search(embeddings.astype(np.float32), 1)
        assert (found[:, 0] == np.arange(len(embeddings))).all(), folder
        named = metadata[hashes].take(pa.array(found[:, 0])).to_pylist()
        np.testing.assert_array_equal(space.read(f"{kind[:-1]}_global", space.rows(kind, named)), embeddings)


def test_clip_retrieval_partitions_of_one_row_give_the_same_collections(small_store, clip_export, tmp_path,
                                                                        monkeypatch):
    from cache_schemas import exchange

    monkeypatch.setattr(exchange, "BLOCK_BYTES", 1)
    out = tmp_path / "parts"
    summary = exchange.export_clip_retrieval(open_store(str(small_store)), "sc", None, str(out))
    n_texts = summary.rows["texts"]
    assert n_texts >= 10 and sorted(os.listdir(out / "texts/text_emb"))[:2] == ["text_emb_00.npy", "text_emb_01.npy"]
    for folder, sub in (("images", "img_emb"), ("texts", "text_emb")):
        assert len(os.listdir(out / folder / sub)) == summary.rows[folder]
        whole, parts = _collection(clip_export / folder, sub), _collection(out / folder, sub)
        np.testing.assert_array_equal(whole[0], parts[0])
        assert whole[1].equals(parts[1])


def test_clip_retrieval_keeps_url_and_key_where_the_items_have_them(small_store, tmp_path):
    if "url" not in tables.ITEMS.names:
        pytest.skip("the items table has no url/key columns yet (cache_schemas/tables.py)")
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    opened = open_store(str(store), mode="a")
    sc = opened.dataset("sc")
    n = sc.items.num_rows
    urls = [f"https://example.com/{i}.jpg" if i % 2 else None for i in range(n)]
    items = sc.items.drop_columns([c for c in ("url", "key") if c in sc.items.column_names])
    items = items.append_column("url", pa.array(urls, pa.string())).append_column(
        "key", pa.array([f"{i:09d}" for i in range(n)], pa.string()))
    opened.register_dataset("web", items, sc.images, sc.texts, sc.errors, {"format": "test"})
    out = tmp_path / "clip"
    assert main(["cache", "export", str(store), "--dataset", "web", "--format", "clip-retrieval", str(out)]) == 0
    by_id = {row["item_id"]: (url, f"{i:09d}") for i, (row, url) in enumerate(zip(items.to_pylist(), urls))}
    for folder, sub in (("images", "img_emb"), ("texts", "text_emb")):
        metadata = _collection(out / folder, sub)[1].to_pylist()
        assert [(row["url"], row["key"]) for row in metadata] == [by_id[row["item_ids"][0]] for row in metadata]


def _state(path):
    """What an output is: a file's bytes, or a folder's files with sizes and times."""
    return path.read_bytes() if path.is_file() else _files(path)


@pytest.mark.parametrize("fmt", ["hdf5", "clip-retrieval"])
@pytest.mark.parametrize("existing", ["file", "folder"])
def test_an_existing_output_is_refused_without_force_and_replaced_whole_with_it(
        fmt, existing, small_store, tmp_path, capfd):
    out = tmp_path / "out"
    if existing == "file":
        out.write_bytes(b"someone's file")
    else:
        (out / "img_emb").mkdir(parents=True)
        (out / "img_emb" / "stale.npy").write_bytes(b"not ours")
    before = _state(out)
    args = ["cache", "export", str(small_store), "--dataset", "sc", "--format", fmt, str(out)]
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err == f"error: {out} already exists; pass --force to replace it\n", err
    assert _state(out) == before
    assert main([*args, "--force"]) == 0
    if fmt == "hdf5":
        with ExportFile.open(str(out)) as f:
            assert f.dataset == "sc"
    else:
        assert sorted(os.listdir(out)) == ["images", "texts"]
    assert os.listdir(tmp_path) == ["out"], "no .partial or .old left beside it"


@pytest.mark.parametrize("fmt", ["hdf5", "clip-retrieval"])
def test_an_export_onto_its_own_store_a_folder_holding_it_or_a_url_is_refused(fmt, small_store, tmp_path,
                                                                               monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    before = _files(small_store)
    for out, says in ((small_store, "is or holds the store"), (small_store.parent, "is or holds the store"),
                      ("s3://bucket/export", "is a URL; an export is written to a local path")):
        assert main(["cache", "export", str(small_store), "--dataset", "sc", "--format", fmt, str(out), "--force"]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert _files(small_store) == before and os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["hdf5", "clip-retrieval"])
def test_an_export_that_fails_midway_leaves_the_old_one_as_it_was(fmt, small_store, tmp_path, monkeypatch, capfd):
    from cache_schemas import exchange
    from cache_schemas.embeddings import SpaceEmbeddings

    out = tmp_path / "out"
    args = ["cache", "export", str(small_store), "--dataset", "sc", "--format", fmt, str(out), "--force"]
    assert main(args) == 0
    before = _state(out)
    assert main([*args, "--space", "ViT-B-99"]) == 2 and "no space 'ViT-B-99'" in capfd.readouterr().err
    reads, real_read = [], SpaceEmbeddings.read

    def read_then_fail(self, name, rows):  # the store goes away after a few blocks are written
        if len(reads) == 3:
            raise OSError("connection lost")
        reads.append(name)
        return real_read(self, name, rows)

    monkeypatch.setattr(exchange, "BLOCK_BYTES", 1)
    monkeypatch.setattr(SpaceEmbeddings, "read", read_then_fail)
    write = exchange.export_hdf5 if fmt == "hdf5" else exchange.export_clip_retrieval
    with pytest.raises(OSError, match="connection lost"):
        write(open_store(str(small_store)), "sc", None, str(out), force=True)
    assert _state(out) == before and os.listdir(tmp_path) == ["out"]


def test_what_a_killed_export_left_is_cleared_or_put_back(small_store, clip_export, tmp_path, capfd):
    out = tmp_path / "clip"
    (tmp_path / ".clip.partial" / "img_emb").mkdir(parents=True)  # killed while writing
    (tmp_path / ".clip.partial" / "img_emb" / "img_emb_0.npy").write_bytes(b"half")
    assert _clip_export(small_store, out) == 0
    assert os.listdir(tmp_path) == ["clip"]
    assert len(_collection(out / "images", "img_emb")[0]) == 11
    os.rename(out, tmp_path / ".clip.old")  # killed between a folder swap's renames: the old export is put back
    before = _files(tmp_path / ".clip.old")
    assert _clip_export(small_store, out) == 2 and "already exists" in capfd.readouterr().err
    assert os.listdir(tmp_path) == ["clip"] and _files(out) == before


def test_importing_content_the_store_holds_writes_nothing(small_store, exported, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    before = _files(store / "spaces")
    summary = import_hdf5(str(exported), str(store), "sc-again")
    assert summary.written == {"images": 0, "texts": 0} and summary.shards == 0
    assert summary.present == summary.in_file == {"images": 11, "texts": 42}
    assert _files(store / "spaces") == before
    _assert_same_dataset_and_rows(small_store, store, new_name="sc-again")
    datasets = _files(store / "datasets")
    assert main(["cache", "import", str(exported), "--store", str(store)]) == 0  # the same dataset again: a no-op
    assert _files(store / "spaces") == before and _files(store / "datasets") == datasets


def test_import_writes_only_the_content_a_store_lacks(small_store, exported, small_sugarcrepe, tmp_path):
    annotations, images = small_sugarcrepe
    part = tmp_path / "part"
    part.mkdir()
    for subset in ("swap_att", "swap_obj"):
        shutil.copy(os.path.join(annotations, f"{subset}.json"), part)
    store = tmp_path / "store"
    first = run_extract(part, "sugarcrepe", "swaps", store, images_root=images)
    swaps = open_store(str(store)).dataset("swaps")
    held = {kind: set(getattr(swaps, kind)["hash"].to_pylist()) for kind in ("images", "texts")}
    snapshot = tmp_path / "before"
    shutil.copytree(store, snapshot)
    summary = import_hdf5(str(exported), str(store))
    assert summary.present == {"images": first.images, "texts": first.texts}
    assert summary.written == {"images": 11 - first.images, "texts": 42 - first.texts}
    # the rows written are the file's; the rows held before are untouched (another extraction's numbers
    # may differ in the last bit: the encoder batches differently)
    everything = open_store(str(small_store)).dataset("sc")
    lacked = {kind: set(getattr(everything, kind)["hash"].to_pylist()) - held[kind] for kind in held}
    _assert_same_dataset_and_rows(small_store, store, only=lacked)
    _assert_same_dataset_and_rows(snapshot, store, name="swaps", only=held)


def test_an_interrupted_import_resumes_its_pending_shards(small_store, exported, tmp_path, monkeypatch):
    commits = []

    def commit_then_die(*args):
        if len(commits) == 2:
            raise RuntimeError("killed")
        commits.append(args[1])
        real_commit(*args)

    real_commit = importer.commit_text_shard
    monkeypatch.setattr(importer, "commit_text_shard", commit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        import_hdf5(str(exported), str(tmp_path / "store"))
    assert open_store(str(tmp_path / "store")).space("vlcache-tiny").pending_shards("texts")
    monkeypatch.undo()
    summary = import_hdf5(str(exported), str(tmp_path / "store"))
    assert summary.written["images"] == 0 and 0 < summary.written["texts"] < 42 and summary.left == 0
    assert not open_store(str(tmp_path / "store")).space("vlcache-tiny").pending_shards("texts")
    _assert_same_dataset_and_rows(small_store, tmp_path / "store")


def _damaged(exported, tmp_path, change):
    path = tmp_path / "damaged.h5"
    shutil.copy(exported, path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _set(f, name, index, value):
    f[name][index] = value


def _plain_h5(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    return path


def _edit_spec(f):
    f.attrs["space"] = f.attrs["space"].replace('"layer": -1', '"layer": -2')


def _shorten(f):
    f["embeddings/image_global"].resize((5, f["embeddings/image_global"].shape[1]))


BAD_FILES = {  # case: (what the file is made from, what the one line says)
    "missing file": (lambda exported, tmp: tmp / "nope.h5", "no such file"),
    "not HDF5": (lambda exported, tmp: shutil.copy(__file__, tmp / "notes.h5"), "cannot be read as HDF5"),
    "HDF5 but not an export": (lambda exported, tmp: _plain_h5(tmp / "plain.h5"), "is not a vlcache export"),
    "an array missing": (lambda exported, tmp: _damaged(exported, tmp, lambda f: f.pop("embeddings/text_global")),
                         "does not follow the vlcache export layout"),
    "a wrong shape": (lambda exported, tmp: _damaged(exported, tmp, _shorten), "image_global is float16 (5, 64)"),
    "an edited spec": (lambda exported, tmp: _damaged(exported, tmp, _edit_spec), "does not match its content"),
    "a non-finite value": (lambda exported, tmp: _damaged(exported, tmp, lambda f: _set(
        f, "embeddings/image_global", 3, np.nan)), "holds zeros or non-finite numbers"),
    "a zeroed token": (lambda exported, tmp: _damaged(exported, tmp, lambda f: _set(
        f, "embeddings/text_tokens/values", 7, 0)), "text_tokens of text"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_line_exit_2_and_no_store(case, exported, tmp_path, capfd):
    make, expected = BAD_FILES[case]
    path = make(exported, tmp_path)
    assert main(["cache", "import", str(path), "--store", str(tmp_path / "store")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not os.path.exists(tmp_path / "store"), "nothing is written from a refused file"


@pytest.mark.parametrize("args, expected", [
    (["--dataset", "nope"], "no dataset 'nope'"),
    (["--dataset", "sc", "--space", "ViT-B-99"], "no space 'ViT-B-99'"),
    (["--dataset", "sc", "--format", "parquet"], "'parquet' is not one of"),
])
def test_an_unknown_dataset_space_or_format_is_one_line_exit_2(args, expected, small_store, tmp_path, capfd):
    out = tmp_path / "out.h5"
    assert main(["cache", "export", str(small_store), *args, str(out)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not os.path.exists(out)


def test_an_existing_dataset_with_other_content_is_refused_before_any_embedding_is_written(exported, tmp_path, capfd):
    store = tmp_path / "store"
    assert main(["cache", "import", str(exported), "--store", str(store)]) == 0
    other = _damaged(exported, tmp_path, lambda f: _set(f, "tables/items/subset", 0, "renamed"))
    capfd.readouterr()
    assert main(["cache", "import", str(other), "--store", str(store)]) == 2
    assert "already exists" in capfd.readouterr().err
    assert main(["cache", "import", str(other), "--store", str(store), "--replace"]) == 0
    assert open_store(str(store)).dataset("sc").items["subset"][0].as_py() == "renamed"


def test_tables_with_nulls_lists_and_boxes_survive_hdf5(tmp_path):
    images = pa.Table.from_pylist([
        {"hash": "a", "uri": "x.png", "width": 3, "height": 4, "boxes": [[0, 1, 2, 3], [1.5, 2, 3, 4]]},
        {"hash": "b", "uri": "y.png", "width": 5, "height": 6, "boxes": None},
        {"hash": "c", "uri": "z.png", "width": 7, "height": 8, "boxes": []},
    ], schema=tables.DATASET_IMAGES)
    texts = pa.Table.from_pylist([{"hash": "h", "text": "a red cube", "segments": ["a red cube", ""]},
                                  {"hash": "i", "text": "", "segments": None}], schema=tables.DATASET_TEXTS)
    items = pa.Table.from_pylist([{"item_id": "1", "subset": "s", "type": None, "subtype": "", "split": "test",
                                   "image": None, "caption": "h", "negative_captions": [],
                                   "negative_images": ["a", "b"]}], schema=tables.ITEMS)
    cases = {"images": (images, tables.DATASET_IMAGES), "texts": (texts, tables.DATASET_TEXTS),
             "items": (items, tables.ITEMS), "errors": (tables.ERRORS.empty_table(), tables.ERRORS)}
    with h5py.File(tmp_path / "t.h5", "w") as f:
        for name, (table, _) in cases.items():
            write_table(f, name, table)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["images/boxes/values"].shape == (2, 4) and f["images/boxes/offsets"][()].tolist() == [0, 2, 2, 2]
        assert f["images/boxes.valid"][()].tolist() == [True, False, True] and "hash.valid" not in f["images"]
        for name, (table, schema) in cases.items():
            assert tables.conform(read_table(f, name, schema), schema, name).equals(table), name
