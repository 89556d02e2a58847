"""Inputs as the field's tools write them: Hugging Face `datasets` (Dataset.to_parquet, save_to_disk,
DatasetDict.save_to_disk, hub-style folders of Parquet shards) and img2dataset's three output layouts.

The `datasets` files are written by the real `datasets` package, and img2dataset's webdataset shards
by the real `webdataset` TarWriter (which img2dataset itself uses). img2dataset is not installable
here, so its `files` and `parquet` layouts are written as its README and its writer.py describe them:
`00000/000000001.jpg` with `.txt` and `.json` (url, caption, key, status, ...) beside a `00000.parquet`
of metadata; or `00000.parquet` with the same metadata columns, `txt` and the image bytes in `jpg`
(null where the download failed)."""

import hashlib
import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset
from PIL import Image

from cache_schemas import open_store, tables
from cache_schemas.store import _fingerprint
from pipeline.images import read_bytes
from pipeline.readers import ReaderOptions, read_source
from workflows.cli import main

COLOURS = {"red.png": "red", "blue.png": "blue", "green.jpg": "green"}


@pytest.fixture
def images(tmp_path):
    """Three tiny images on disk (PNG and JPEG); their bytes by name."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (8, 8), colour).save(folder / name)
    return {name: (folder / name).read_bytes() for name in COLOURS}


def _cast(columns):
    return datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())


def _extract(source, store, *options):
    return main(["extract", str(source), "--dataset", "d", "--model", "vlcache-tiny", "--store", str(store),
                 "--rows-per-shard", "8", "--decode-processes", "0", "--quiet", *options])


# -- Hugging Face datasets ---------------------------------------------------------------------

def test_to_parquet_path_only_images_are_read_from_their_files(images, tmp_path, capsys, monkeypatch):
    """`Dataset.to_parquet` keeps images cast from paths as {bytes: None, path}: an absolute path is
    the file; a relative one is under the Parquet file's folder, or under --images-root."""
    folder = tmp_path / "images"
    monkeypatch.chdir(folder)  # where the relative path was written from (datasets reads its size)
    _cast({"image": [str(folder / "red.png"), "blue.png"], "caption": ["a red square", "a blue square"]}
          ).to_parquet(str(folder / "x.parquet"))
    cells = pq.read_table(folder / "x.parquet")["image"].to_pylist()
    assert [c["bytes"] for c in cells] == [None, None] and cells[1]["path"] == "blue.png"  # as datasets wrote it
    assert [i.image for i in read_source(str(folder / "x.parquet"), "parquet").items] == [
        str(folder / "red.png"), str(folder / "blue.png")]
    moved = read_source(str(folder / "x.parquet"), "parquet", images_root=str(tmp_path / "elsewhere")).items
    assert moved[1].image == str(tmp_path / "elsewhere" / "blue.png")

    assert _extract(folder / "x.parquet", tmp_path / "store", "--format", "parquet") == 0, capsys.readouterr().err
    items = open_store(tmp_path / "store").dataset("d").items
    assert items["image"].to_pylist() == [hashlib.sha256(images[n]).hexdigest() for n in ("red.png", "blue.png")]


def test_a_table_mixing_embedded_and_path_only_images(images, tmp_path, monkeypatch):
    """An image made in memory is stored as bytes, a path as a path: each cell is read the way it is stored."""
    folder = tmp_path / "images"
    monkeypatch.chdir(folder)
    _cast({"image": [Image.new("RGB", (8, 8), "green"), "red.png"], "caption": ["green", "red"]}
          ).to_parquet(str(folder / "mixed.parquet"))
    first, second = read_source(str(folder / "mixed.parquet"), "parquet").items
    assert first.image.startswith("table://") and Image.open(io.BytesIO(read_bytes(first.image))).size == (8, 8)
    assert second.image == str(folder / "red.png") and read_bytes(second.image) == images["red.png"]


def _dataset_dict(folder, tmp_path):
    train = _cast({"image": [str(folder / "red.png"), str(folder / "blue.png")], "caption": ["red", "blue"]})
    test = _cast({"image": [str(folder / "green.jpg")], "caption": ["green"]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    train.save_to_disk(str(tmp_path / "plain"))
    return tmp_path / "dd", tmp_path / "plain"


def test_save_to_disk_folders_a_dataset_and_a_dataset_dict_split(images, tmp_path):
    dd, plain = _dataset_dict(tmp_path / "images", tmp_path)
    kept = read_source(str(plain), "parquet").items  # save_to_disk embeds the bytes
    assert [read_bytes(i.image) for i in kept] == [images["red.png"], images["blue.png"]]
    assert {i.split for i in kept} == {"test"}  # a plain Dataset names no split: the default, as before
    train = read_source(str(dd), "parquet", split="train").items
    assert [(read_bytes(i.image), i.split) for i in train] == [(images["red.png"], "train"),
                                                                (images["blue.png"], "train")]
    (test,) = read_source(str(dd), "parquet", split="test").items
    assert read_bytes(test.image) == images["green.jpg"] and test.split == "test"


def _hub_folder(images, tmp_path):
    """A hub snapshot: README.md and data/<split>-0000i-of-0000n.parquet, images inside."""
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    (tmp_path / "hub" / "README.md").write_text("---\nconfigs: [{config_name: default}]\n---\n")
    pil = {n: Image.open(io.BytesIO(b)) for n, b in images.items()}
    train = _cast({"image": [pil["red.png"], pil["blue.png"]], "caption": ["red", "blue"]})
    for i in range(2):
        train.shard(2, i).to_parquet(str(data / f"train-0000{i}-of-00002.parquet"))
    _cast({"image": [pil["green.jpg"]], "caption": ["green"]}).to_parquet(str(data / "test-00000-of-00001.parquet"))
    return tmp_path / "hub"


def test_a_hub_folder_of_shards_and_a_glob_read_the_split_asked_for(images, tmp_path):
    hub = _hub_folder(images, tmp_path)
    for source, split in ((hub, "train"), (hub / "data", "train"), (hub / "data" / "train-0000*.parquet", None)):
        items = read_source(str(source), "parquet", split=split).items
        assert [(i.caption, i.split) for i in items] == [("red", "train"), ("blue", "train")], source
        assert len({i.image for i in items}) == 2 and all(i.image.startswith("table://") for i in items)
    (green,) = read_source(str(hub), "parquet", split="test").items
    assert green.caption == "green" and green.split == "test"


@pytest.mark.parametrize("case, expected", [
    ("no split", "holds the splits train, test: choose one with --split"),
    ("unknown split", "has no split 'val'; its splits: train, test"),
    ("hub, unknown split", "has no split 'val'; its splits: test, train"),
    ("glob matching nothing", "no files match"),
    ("missing path-only image", "none of the 1 images could be read"),
])
def test_bad_inputs_are_one_line(case, expected, images, tmp_path, capfd):
    dd, _ = _dataset_dict(tmp_path / "images", tmp_path)
    hub = _hub_folder(images, tmp_path)
    (tmp_path / "gone.png").write_bytes(images["red.png"])
    _cast({"image": [str(tmp_path / "gone.png")], "caption": ["a square moved away since"]}
          ).to_parquet(str(tmp_path / "gone.parquet"))
    (tmp_path / "gone.png").unlink()
    source, options = {
        "no split": (dd, []),
        "unknown split": (dd, ["--split", "val"]),
        "hub, unknown split": (hub, ["--split", "val"]),
        "glob matching nothing": (hub / "data" / "validation-*.parquet", []),
        "missing path-only image": (tmp_path / "gone.parquet", []),
    }[case]
    assert _extract(source, tmp_path / "store", "--format", "parquet", *options) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    if case == "missing path-only image":
        assert str(tmp_path / "gone.png") in err
    assert not (tmp_path / "store" / "datasets" / "d").exists()


# -- img2dataset ---------------------------------------------------------------------------------

SAMPLES = [  # (key, url, caption); the last one failed to download
    ("000000000", "https://example.com/red.png", "a red square"),
    ("000000001", "https://example.com/blue.png", "a blue square"),
    ("000000002", "https://example.com/gone.png", "a lost square"),
]


META = [("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
        ("error_message", pa.string()), *((n, pa.int64()) for n in ("width", "height", "original_width",
                                                                      "original_height")),
        ("exif", pa.string()), ("sha256", pa.string())]


def _meta(key, url, caption, ok):
    return {"url": url, "caption": caption, "key": key, "status": "success" if ok else "failed_to_download",
            "error_message": None if ok else "HTTP Error 404: Not Found", "width": 8 if ok else None,
            "height": 8 if ok else None, "original_width": 8 if ok else None, "original_height": 8 if ok else None,
            "exif": None, "sha256": None}


def _img2dataset(layout, images, out):
    """img2dataset's output folder for SAMPLES in `layout`, as its writers lay it out."""
    out.mkdir()
    data = [images["red.png"], images["blue.png"], None]
    metas = [_meta(*s, ok=d is not None) for s, d in zip(SAMPLES, data)]
    (out / "00000_stats.json").write_text(json.dumps({"count": 3, "successes": 2}))
    if layout == "parquet":
        rows = [{**m, "txt": m["caption"] if d else None, "jpg": d} for m, d in zip(metas, data)]
        schema = pa.schema([*META, ("txt", pa.string()), ("jpg", pa.binary())])
        pq.write_table(pa.Table.from_pylist(rows[:2], schema=schema), out / "00000.parquet")
        pq.write_table(pa.Table.from_pylist(rows[2:], schema=schema), out / "00001.parquet")
        return out
    pq.write_table(pa.Table.from_pylist(metas, schema=pa.schema(META)), out / "00000.parquet")  # beside the images
    if layout == "webdataset":
        with webdataset.TarWriter(str(out / "00000.tar")) as tar:
            for meta, image in zip(metas, data):
                if image is not None:
                    tar.write({"__key__": meta["key"], "jpg": image, "txt": meta["caption"],
                               "json": json.dumps(meta, indent=4)})
        return out
    (out / "00000").mkdir()
    for meta, image in zip(metas, data):
        if image is not None:
            (out / "00000" / f"{meta['key']}.jpg").write_bytes(image)
            (out / "00000" / f"{meta['key']}.txt").write_text(meta["caption"])
            (out / "00000" / f"{meta['key']}.json").write_text(json.dumps(meta, indent=4))
    return out


@pytest.mark.parametrize("layout, fmt", [("files", "folder"), ("webdataset", "webdataset"), ("parquet", "parquet")])
def test_img2dataset_layouts_keep_url_and_key_in_the_items_table(layout, fmt, images, tmp_path, capsys):
    out = _img2dataset(layout, images, tmp_path / "out")
    extra = ["--image-column", "jpg"] if fmt == "parquet" else []
    assert _extract(out, tmp_path / "store", "--format", fmt, *extra) == 0, capsys.readouterr().err
    data = open_store(tmp_path / "store").dataset("d")
    texts = dict(zip(data.texts["hash"].to_pylist(), data.texts["text"].to_pylist()))
    got = sorted(zip(data.items["key"].to_pylist(), data.items["url"].to_pylist(),
                     [texts[h] for h in data.items["caption"].to_pylist()]))
    assert got == SAMPLES[:2]
    assert data.items["image"].to_pylist() == [hashlib.sha256(images[n]).hexdigest() for n in ("red.png", "blue.png")]
    if layout == "parquet":  # the failed download is a row without an image: recorded, not fatal
        assert data.errors["source"].to_pylist() == [f"{out / '00001.parquet'} row 0"]
        assert data.errors["message"].to_pylist() == ["no image bytes or path (failed_to_download: "
                                                      "HTTP Error 404: Not Found)"]


def test_an_image_column_of_another_name_in_arrow(images, tmp_path):
    """--image-column names the column in the URIs too (reading it used to look for "image")."""
    datasets.Dataset.from_dict({"jpg": [images["red.png"]], "caption": ["red"], "url": ["https://example.com/r"],
                                "key": ["000000000"]}).save_to_disk(str(tmp_path / "arrow"))
    (item,) = read_source(str(tmp_path / "arrow"), "parquet", options=ReaderOptions(image_column="jpg")).items
    assert "column=jpg" in item.image and read_bytes(item.image) == images["red.png"]
    assert (item.url, item.key) == ("https://example.com/r", "000000000")


def test_items_without_url_or_key_keep_the_fingerprint_they_had_before_those_columns():
    """Stores registered before 1.4 would otherwise see their datasets as changed on the next run."""
    row = {"item_id": "0", "subset": "s", "split": "test", "image": "a", "caption": "c", "negative_captions": [],
           "negative_images": []}
    before = pa.schema([f for f in tables.ITEMS if f.name not in tables.LATER_COLUMNS["items"]])
    old = {"items": tables.conform(pa.Table.from_pylist([row]), before, "items")}
    new = {"items": tables.conform(pa.Table.from_pylist([row]), tables.ITEMS, "items")}
    assert _fingerprint(new) == _fingerprint(old)
    with_url = {"items": tables.conform(pa.Table.from_pylist([{**row, "url": "u"}]), tables.ITEMS, "items")}
    assert _fingerprint(with_url) != _fingerprint(old)

