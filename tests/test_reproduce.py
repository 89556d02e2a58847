"""`vlcache reproduce` end to end, offline, at tiny scale, on generated stand-ins of each benchmark in
its real layout: COCO 2017 folders, SugarCrepe's JSON files, BiVLC's Parquet with the images inside,
TROHN-Text's JSON list."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from workflows.cli import main
from workflows.examples import write_sugarcrepe_example

pytestmark = pytest.mark.slow


def _jpeg(rng, size=32):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    rng = np.random.default_rng(0)
    coco = root / "coco"
    (coco / "train2017").mkdir(parents=True)
    for image_id in range(1, 41):
        (coco / "train2017" / f"{image_id:012d}.jpg").write_bytes(_jpeg(rng))
    annotations, _ = write_sugarcrepe_example(str(root / "sc"), sizes={s: 4 for s in (
        "add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")}, n_images=10)
    (root / "sc" / "images").rename(coco / "val2017")  # SugarCrepe names COCO val2017 files
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": _jpeg(rng), "path": f"{i}.jpg"} for i in range(12)]
    pq.write_table(pa.table({
        "image": pa.array(cells[:6], struct), "caption": [f"a photo number {i}" for i in range(6)],
        "negative_caption": [f"number {i} a photo" for i in range(6)], "negative_image": pa.array(cells[6:], struct),
        "type": ["swap", "replace", "add"] * 2, "subtype": ["att", "obj", "rel"] * 2}), root / "bivlc.parquet")
    trohn = [{"image_id": i, "caption": f"a red thing left of a blue thing {i}",
              "negative_caption": f"a blue thing left of a red thing {i}"} for i in range(1, 41)]
    (root / "trohn_text.json").write_text(json.dumps(trohn))
    return root, annotations


def test_reproduce_writes_the_papers_table_with_published_numbers_beside(stand_ins, tmp_path):
    root, annotations = stand_ins
    out = tmp_path / "paper"
    config = tmp_path / "short.json"
    config.write_text(json.dumps({"train": {"steps": 4, "batch_size": 8, "warmup_steps": 1},
                                  "finetune": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "lr": 1e-4}}))
    args = ["reproduce", "--config", str(config), "--coco", str(root / "coco"), "--sugarcrepe", annotations, "--bivlc",
            str(root / "bivlc.parquet"), "--trohn", str(root / "trohn_text.json"), "--model", "vlcache-tiny",
            "--out", str(out), "--seeds", "0,1", "--quiet"]
    assert main(args) == 0
    result = json.loads((out / "reproduce.json").read_text())
    assert set(result["measured"]) == {"global", "global-mlp", "maxsim", "tflocal", "fine-tuned",
                                       "fine-tuned + hard negatives"}
    assert result["measured"]["fine-tuned + hard negatives"]["swap_att"]["seeds"] == 2
    # Each fine-tuned encoder (2 methods x 2 seeds) is a space of its own beside the frozen one.
    from cache_schemas import open_store
    assert len(open_store(str(out / "store")).space_keys()) == 5
    tflocal = result["measured"]["tflocal"]
    assert tflocal["swap_att"]["seeds"] == 2 and 0 <= tflocal["bivlc group"]["mean"] <= 1
    assert result["published"]["zero-shot CLIP"]["sugarcrepe avg"] == 73.1
    table = (out / "reproduce.md").read_text()
    for row in ("| tflocal (measured) |", "| global (measured) |", "| fine-tuned + hard negatives (measured) |",
                "| zero-shot CLIP (published) |",
                "| TFLocal (paper) (published) |"):
        assert row in table
    assert "swap_att" in table and "bivlc group" in table


def test_reproduce_names_what_is_missing_in_one_line(stand_ins, tmp_path, capfd):
    root, annotations = stand_ins
    (tmp_path / "coco").mkdir()
    args = ["reproduce", "--coco", str(tmp_path / "coco"), "--sugarcrepe", annotations, "--bivlc",
            str(root / "bivlc.parquet"), "--trohn", str(root / "trohn_text.json"), "--model", "vlcache-tiny",
            "--out", str(tmp_path / "out")]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "COCO train2017 images" in err and "COCO val2017 images" in err
