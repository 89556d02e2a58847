"""Every reader normalises its format into the same RawDataset; one contract, then each format's own rules."""

import json
import os
import re

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cache_schemas import InvalidSourceError
from pipeline.readers import FORMATS, read_source

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
    if fmt in ("csv", "jsonl", "parquet", "bivlc"):
        table = pa.Table.from_pylist(ROWS)
        path = os.path.join(root, {"csv": "t.csv", "jsonl": "t.jsonl", "parquet": "t.parquet", "bivlc": "b.jsonl"}[fmt])
        if fmt == "csv":
            pyarrow.csv.write_csv(table, path)
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


def _source(fmt, tmp_path):
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    return _write(fmt, str(tmp_path)), str(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_reader_keeps_the_items_and_their_content(fmt, tmp_path):
    path, root = _source(fmt, tmp_path)
    dataset = read_source(path, fmt, images_root=root if fmt == "sugarcrepe" else None)
    found = {(os.path.basename(i.image), i.caption) for i in dataset.items}
    assert found == {(r["image"], r["caption"]) for r in ROWS}
    assert all(os.path.isabs(i.image) and os.path.exists(i.image) for i in dataset.items)
    assert len({i.item_id for i in dataset.items}) == len(dataset.items)
    assert sorted(map(os.path.basename, dataset.image_uris())) == ["a.png", "b.png"]
    expected_texts = {r["caption"] for r in ROWS}
    if fmt not in ("coco", "folder"):  # the formats that carry negatives
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
