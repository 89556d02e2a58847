"""Bad and unusual images: each is either converted to RGB or recorded as an error, never fatal."""

import json

import numpy as np
import pytest
from PIL import Image

from cache_schemas import open_store, verify
from pipeline import images
from pipeline.images import ImageError, decode, probe

from .conftest import run_extract


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return str(path)


@pytest.fixture
def zoo(tmp_path):
    """One file of each kind that real image folders contain."""
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    files = {
        "rgb": _save(tmp_path / "rgb.jpg", rgb),
        "gray": _save(tmp_path / "gray.png", rgb.convert("L")),
        "cmyk": _save(tmp_path / "cmyk.jpg", rgb.convert("CMYK")),
        "alpha": _save(tmp_path / "alpha.png", Image.new("RGBA", (40, 30), (255, 0, 0, 0))),
        "palette": _save(tmp_path / "palette.gif", rgb.convert("P")),
        "sixteen_bit": _save(tmp_path / "16bit.png", Image.fromarray(np.full((30, 40), 65535, np.uint16))),
    }
    truncated = (tmp_path / "rgb.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (tmp_path / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    files.update(truncated=str(tmp_path / "truncated.jpg"), garbage=str(tmp_path / "not_an_image.png"),
                 missing=str(tmp_path / "missing.png"))
    return files


def test_unusual_modes_decode_to_rgb(zoo):
    for kind in ("rgb", "gray", "cmyk", "alpha", "palette", "sixteen_bit"):
        image = decode(_read(zoo[kind]), 64)
        assert image.mode == "RGB" and image.size == (40, 30), kind


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_transparent_pixels_become_white_and_16_bit_keeps_its_range(zoo):
    assert decode(_read(zoo["alpha"]), 64).getpixel((0, 0)) == (255, 255, 255)
    assert decode(_read(zoo["sixteen_bit"]), 64).getpixel((0, 0)) == (255, 255, 255)


def test_broken_files_raise_image_errors_with_their_stage(zoo):
    assert probe(zoo["missing"]).stage == "read"
    assert probe(zoo["garbage"]).stage == "decode"
    assert probe(zoo["truncated"]).hash is not None  # the header is fine; decoding is not
    with pytest.raises(ImageError) as caught:
        decode(_read(zoo["truncated"]), 64)
    assert caught.value.stage == "decode"


def test_images_over_the_pixel_limit_are_refused(zoo, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    assert "too large" in probe(zoo["rgb"]).message


def test_an_extraction_with_bad_images_finishes_and_counts_them(zoo, tmp_path):
    rows = [{"image": path, "caption": f"image {kind}"} for kind, path in zoo.items()]
    with open(tmp_path / "zoo.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    summary = run_extract(tmp_path / "zoo.jsonl", "jsonl", "zoo", tmp_path / "store")
    assert summary.items == 9
    assert summary.images_encoded == 6  # rgb, gray, cmyk, alpha, palette, 16-bit
    assert summary.failed == 3  # missing, garbage (both at read time) and truncated (at decode time)
    store = open_store(tmp_path / "store")
    read_errors = store.dataset("zoo").errors.to_pylist()
    decode_errors = store.space("vlcache-tiny").errors().to_pylist()
    assert {(e["source"], e["stage"]) for e in read_errors} == {(zoo["missing"], "read"), (zoo["garbage"], "decode")}
    assert [(e["source"], e["stage"]) for e in decode_errors] == [(zoo["truncated"], "decode")]
    items = {r["caption"]: r["image"] for r in store.dataset("zoo").items.to_pylist()}
    assert sum(h is None for h in items.values()) == 2  # items keep their place; their image is unknown


def test_failed_images_are_retried_only_on_request(zoo, tmp_path):
    rows = [{"image": zoo["truncated"], "caption": "a truncated file"}]
    with open(tmp_path / "t.jsonl", "w") as f:
        f.write(json.dumps(rows[0]) + "\n")
    run_extract(tmp_path / "t.jsonl", "jsonl", "t", tmp_path / "store")
    again = run_extract(tmp_path / "t.jsonl", "jsonl", "t", tmp_path / "store")
    retried = run_extract(tmp_path / "t.jsonl", "jsonl", "t", tmp_path / "store", retry_failed=True)
    assert again.shards_run == 0  # a failure is a result: it is not retried by default
    assert retried.shards_run == 1  # the image's new shard; the text was encoded the first time
    assert retried.failed == 1
    assert verify(open_store(tmp_path / "store")).ok  # the failed row and its retry are not duplicates
