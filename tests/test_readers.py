"""Every reader normalises its format into the same RawDataset; one contract, then each format's own rules."""

import io
import json
import os
import re
import tarfile

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cache_schemas import InvalidSourceError
from pipeline.images import read_bytes
from pipeline.readers import FORMATS, ReaderOptions, read_source

ROWS = [  # the same three logical items, written in every format
    {"image": "a.png", "caption": "a red circle", "negative_caption": "a blue circle", "negative_image": "b.png",
     "type": "replace", "subtype": "att"},
    {"image": "b.png", "caption": "a blue circle", "negative_caption": "a red circle", "negative_image": "a.png",
     "type": "replace", "subtype": "att"},
    {"image": "a.png", "caption": "a circle on grey", "negative_caption": "grey on a circle", "negative_image": "b.png",
     "type": "swap", "subtype": "obj"},
]


def _write(fmt, root):
    """Write ROWS in `fmt` under `root`; return the source path."""
    if fmt in ("csv", "tsv", "jsonl", "parquet", "bivlc"):
        table = pa.Table.from_pylist(ROWS)
        path = os.path.join(root, {"csv": "t.csv", "tsv": "t.tsv", "jsonl": "t.jsonl", "parquet": "t.parquet",
                                   "bivlc": "b.jsonl"}[fmt])
        if fmt in ("csv", "tsv"):
            pyarrow.csv.write_csv(table, path, pyarrow.csv.WriteOptions(delimiter="," if fmt == "csv" else "\t"))
        elif fmt == "parquet":
            pq.write_table(table, path)
        else:
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in ROWS)
        return path
    if fmt == "sugarcrepe":
        os.makedirs(os.path.join(root, "sc"))
        for subset in ("replace_att", "swap_obj"):
            rows = [r for r in ROWS if f"{r['type']}_{r['subtype']}" == subset]
            entries = {str(i): {"filename": r["image"], "caption": r["caption"],
                                "negative_caption": r["negative_caption"]} for i, r in enumerate(rows)}
            with open(os.path.join(root, "sc", f"{subset}.json"), "w") as f:
                json.dump(entries, f)
        return os.path.join(root, "sc")
    if fmt == "trohn":
        entries = [{"image_id": r["image"], "caption": r["caption"], "negative_caption": r["negative_caption"],
                    "negative_image": r["negative_image"]} for r in ROWS]
        with open(os.path.join(root, "trohn.json"), "w") as f:
            json.dump(entries, f)
        return os.path.join(root, "trohn.json")
    if fmt == "webdataset":  # one key per (image, caption): an image twice under two keys
        with tarfile.open(os.path.join(root, "shard-000.tar"), "w") as tar:
            for i, r in enumerate(ROWS):
                tar.add(os.path.join(root, r["image"]), arcname=f"{i:05d}.png")
                _add_bytes(tar, f"{i:05d}.txt", r["caption"].encode())
        return os.path.join(root, "shard-000.tar")
    if fmt == "coco":
        doc = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
               "annotations": [{"id": 10 + i, "image_id": 1 if r["image"] == "a.png" else 2, "caption": r["caption"]}
                               for i, r in enumerate(ROWS)]}
        with open(os.path.join(root, "captions_val2017.json"), "w") as f:
            json.dump(doc, f)
        return os.path.join(root, "captions_val2017.json")
    assert fmt == "folder"
    for name in ("a", "b"):
        with open(os.path.join(root, f"{name}.txt"), "w") as f:
            f.writelines(r["caption"] + "\n" for r in ROWS if r["image"] == f"{name}.png")
    return root


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _source(fmt, tmp_path):
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    return _write(fmt, str(tmp_path)), str(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_reader_keeps_the_items_and_their_content(fmt, tmp_path):
    path, root = _source(fmt, tmp_path)
    dataset = read_source(path, fmt, images_root=root if fmt in ("sugarcrepe", "trohn") else None)
    names = {(tmp_path / n).read_bytes(): n for n in ("a.png", "b.png")}
    name = lambda uri: names[read_bytes(uri)]  # noqa: E731  (the image a URI names, by its bytes)
    assert {(name(i.image), i.caption) for i in dataset.items} == {(r["image"], r["caption"]) for r in ROWS}
    assert len({i.item_id for i in dataset.items}) == len(dataset.items)
    assert sorted({name(u) for u in dataset.image_uris()}) == ["a.png", "b.png"]
    expected_texts = {r["caption"] for r in ROWS}
    if fmt not in ("coco", "folder", "webdataset"):  # the formats that carry negatives
        negatives = {(i.caption, i.negative_captions) for i in dataset.items}
        assert negatives == {(r["caption"], (r["negative_caption"],)) for r in ROWS}
        expected_texts |= {r["negative_caption"] for r in ROWS}
    assert set(dataset.texts()) == expected_texts and len(dataset.texts()) == len(expected_texts)


def test_sugarcrepe_subsets_types_and_ids(tmp_path):
    path, root = _source("sugarcrepe", tmp_path)
    items = read_source(path, "sugarcrepe", images_root=root).items
    assert {(i.item_id, i.subset, i.type, i.subtype, i.split) for i in items} == {
        ("replace_att/0", "replace_att", "replace", "att", "test"),
        ("replace_att/1", "replace_att", "replace", "att", "test"),
        ("swap_obj/0", "swap_obj", "swap", "obj", "test")}


def test_bivlc_items_are_bidirectional(tmp_path):
    path, _ = _source("bivlc", tmp_path)
    first = read_source(path, "bivlc").items[0]
    assert os.path.basename(first.negative_images[0]) == "b.png"
    assert (first.subset, first.type, first.subtype) == ("replace_att", "replace", "att")


@pytest.mark.parametrize("fmt", ["coco", "folder"])
def test_coco_and_folder_split_names(fmt, tmp_path):
    path, _ = _source(fmt, tmp_path)
    assert {i.split for i in read_source(path, fmt).items} == {"val" if fmt == "coco" else "train"}
    assert read_source(path, fmt, split="test").items[0].split == "test"


def test_annotations_for_the_diagnostic_are_kept(tmp_path):
    row = {"image": "a.png", "caption": "a red circle and a blue square", "boxes": [[0, 0, 4, 4], [4, 4, 8, 8]],
           "caption_segments": ["a red circle", "a blue square"]}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    dataset = read_source(str(tmp_path / "t.jsonl"), "jsonl")
    assert dataset.boxes[str(tmp_path / "a.png")] == [(0, 0, 4, 4), (4, 4, 8, 8)]
    assert dataset.texts() == ["a red circle and a blue square", "a red circle", "a blue square"]


def test_folder_without_captions_still_lists_its_images(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    dataset = read_source(str(tmp_path), "folder")
    assert dataset.items == [] and dataset.image_uris() == [str(tmp_path / "x.png")]


@pytest.mark.parametrize("fmt, content, message", [
    ("jsonl", '{"image": "a.png"}\n', "lacks column(s) ['caption']"),
    ("jsonl", "not json\n", "cannot read"),
    ("bivlc", '{"image": "a.png", "caption": "c"}\n', "lacks column(s)"),
    ("coco", '{"images": []}', "is not a COCO captions file"),
])
def test_malformed_sources_raise_one_clear_error(tmp_path, fmt, content, message):
    path = tmp_path / ("s.jsonl" if fmt != "coco" else "c.json")
    path.write_text(content)
    with pytest.raises(InvalidSourceError, match=re.escape(message)):
        read_source(str(path), fmt)


# -- the benchmarks' real layouts ------------------------------------------------------------------

def _png(colour, size=8):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _bivlc_table(images):
    """BiVLC's Hugging Face layout: image columns as {"bytes", "path"} structs."""
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cell = lambda data: {"bytes": data, "path": None}  # noqa: E731
    return pa.table({
        "image": pa.array([cell(images[0]), cell(images[1])], struct),
        "caption": ["a red square", "a blue square"],
        "negative_caption": ["a blue square", "a red square"],
        "negative_image": pa.array([cell(images[1]), cell(images[0])], struct),
        "type": ["replace", "replace"], "subtype": ["att", "att"]})


def test_parquet_with_embedded_image_bytes_reads_them_back_exactly(tmp_path):
    images = [_png("red"), _png("blue")]
    pq.write_table(_bivlc_table(images), tmp_path / "test.parquet", row_group_size=1)
    dataset = read_source(str(tmp_path / "test.parquet"), "bivlc")
    assert [read_bytes(i.image) for i in dataset.items] == images
    assert [read_bytes(i.negative_images[0]) for i in dataset.items] == images[::-1]
    assert all(i.image.startswith("table://") for i in dataset.items)


def test_a_datasets_save_to_disk_folder_is_read_like_its_parquet(tmp_path):
    images = [_png("red"), _png("blue")]
    folder = tmp_path / "bivlc-test"
    folder.mkdir()
    table = _bivlc_table(images)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    dataset = read_source(str(folder), "bivlc")
    assert [read_bytes(i.image) for i in dataset.items] == images
    assert [i.subset for i in dataset.items] == ["replace_att", "replace_att"]


def test_webdataset_shards_pair_members_by_key_and_record_what_they_skip(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        _add_bytes(tar, "k0.jpg", _png("red"))
        _add_bytes(tar, "k0.txt", b"a red square\n")
        _add_bytes(tar, "k1.webp", _png("blue"))
        _add_bytes(tar, "k1.json", json.dumps({"caption": "a blue square", "url": "http://x"}).encode())
        _add_bytes(tar, "k2.png", _png("green"))  # no caption
        _add_bytes(tar, "k3.txt", b"a caption without an image")
    with tarfile.open(shards / "00001.tar", "w") as tar:
        _add_bytes(tar, "k4.png", _png("red"))  # the same bytes as k0, in another shard
        _add_bytes(tar, "k4.txt", b"red again")
    for source in (str(shards), str(shards / "{00000..00001}.tar"), f"file://{shards}/0000*.tar"):
        dataset = read_source(source, "webdataset")
        assert sorted(i.caption for i in dataset.items) == ["a blue square", "a red square", "red again"], source
        assert sorted(why for _, why in dataset.skipped) == ["no caption (.txt, or a .json with a caption)",
                                                            "no image member (jpg, jpeg, png, webp)"]
        first = next(i for i in dataset.items if i.caption == "a red square")
        again = next(i for i in dataset.items if i.caption == "red again")
        assert read_bytes(first.image) == read_bytes(again.image) == _png("red")


def test_open_clip_tsv_lists_with_their_column_names(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "train.tsv").write_text("filepath\ttitle\na.png\ta red square, with a comma\n")
    options = ReaderOptions(image_column="filepath", caption_column="title")
    (item,) = read_source(str(tmp_path / "train.tsv"), "tsv", options=options).items
    assert item.caption == "a red square, with a comma" and item.image == str(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("filepath;title\na.png;a red square\n")
    (item,) = read_source(str(tmp_path / "train.csv"), "csv",
                          options=ReaderOptions("filepath", "title", separator=";")).items
    assert item.caption == "a red square"


def test_trohn_text_names_coco_train_images_by_id(tmp_path):
    (tmp_path / "trohn.json").write_text(json.dumps([
        {"image_id": 9, "caption": "a cat on a mat", "negative_caption": "a mat on a cat"}]))
    (item,) = read_source(str(tmp_path / "trohn.json"), "trohn", images_root="/coco/train2017").items
    assert item.image == "/coco/train2017/000000000009.jpg" and item.negative_captions == ("a mat on a cat",)
    assert (item.split, item.subset) == ("train", "trohn")


@pytest.mark.parametrize("fmt, write, options, message", [
    ("bivlc", lambda p: pq.write_table(pa.table({"image": [1], "caption": ["c"], "negative_caption": ["n"],
                                                 "negative_image": ["x.png"], "type": ["t"], "subtype": ["s"]}),
                                       p / "s.parquet"),
     ReaderOptions(), "column 'image' must hold paths or image bytes, not int64"),
    ("tsv", lambda p: (p / "s.tsv").write_text("filepath\ttitle\na.png\tcap\n"), ReaderOptions("filepath", "text"),
     "lacks column(s) ['text'] (named by --image-column filepath, --caption-column text)"),
    ("sugarcrepe", lambda p: ((p / "sc").mkdir(), (p / "sc" / "swap_att.json").write_text(
        json.dumps({"0": {"filename": "a.png", "caption": "   ", "negative_caption": "x"}}))), ReaderOptions(),
     "the caption must be a non-empty text"),
    ("coco", lambda p: (p / "c.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": 7}], "annotations": [{"image_id": 1, "caption": "c"}]})), ReaderOptions(),
     "names no image with a file_name text"),
    ("jsonl", lambda p: (p / "s.jsonl").write_text(json.dumps({"image": "a.png", "caption": "c", "type": 3}) + "\n"),
     ReaderOptions(), "type must be a text, got 3"),
    ("jsonl", lambda p: (p / "s.jsonl").write_text(json.dumps({"image": "a.png", "caption": "c",
                                                                "boxes": [[1, 2]]}) + "\n"),
     ReaderOptions(), "boxes must be a list of [x0, y0, x1, y1] numbers"),
    ("trohn", lambda p: (p / "s.json").write_text(json.dumps([{"image_id": True, "caption": "c",
                                                               "negative_caption": "n"}])), ReaderOptions(),
     "image_id must be a COCO image id"),
    ("webdataset", lambda p: (p / "s.tar").write_bytes(b"not a tar"), ReaderOptions(), "cannot read the tar shard"),
])
def test_bad_input_in_the_real_layouts_is_one_clear_error(fmt, write, options, message, tmp_path):
    write(tmp_path)
    source = next(str(p) for p in sorted(tmp_path.iterdir()))
    with pytest.raises(InvalidSourceError, match=re.escape(message)):
        read_source(source, fmt, options=options)
