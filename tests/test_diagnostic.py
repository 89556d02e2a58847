"""The structure-guided diagnostic: value-path features, region pooling, crops, and its scores."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cache_schemas import VlcacheError, open_store, text_hash
from pipeline.encoders import EncoderRequest, describe, load_encoder
from trainer.diagnostic import diagnose, region_boxes
from trainer.diagnostic.crops import _crop, crop_regions, encoder_for
from trainer.diagnostic.regions import patch_weights, pooled_regions, to_input_frame
from workflows.world import WorldConfig, generate

from .conftest import run_extract

DENSE = EncoderRequest("vlcache-tiny", image_tokens=("patches", "cls", "values"), projected=True)


def test_value_path_features_match_an_independent_computation():
    encoder = load_encoder(describe(DENSE))
    pixels = torch.randn(2, 3, 64, 64)
    visual = encoder.model.visual
    with torch.no_grad():
        x = visual._embeds(pixels)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        q, k, v = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
        expected = (visual.ln_post(last.attn.out_proj(v)) @ visual.proj)[:, 1:]
    np.testing.assert_allclose(encoder.encode_images(pixels)["image_values"], expected.numpy(), atol=2e-3)


def test_patch_weights_share_each_box_among_the_cells_it_covers():
    weights = patch_weights(np.array([[0, 0, 16, 16], [8, 0, 24, 16], [40, 40, 40, 40]], np.float32), grid=4, size=64)
    np.testing.assert_allclose(weights[0], np.eye(16)[0])  # exactly the first cell
    np.testing.assert_allclose(weights[1][:2], [0.5, 0.5])  # half of two cells
    assert weights[2].argmax() == 2 * 4 + 2 and weights[2].sum() == pytest.approx(1)  # a point: its cell


def test_boxes_follow_the_resize_and_centre_crop_into_the_input_frame():
    # 200x100 -> short side 64 -> 128x64, then 32 px cropped off each side
    boxes = to_input_frame(np.array([[50, 0, 150, 100], [0, 0, 40, 50]], np.float32), 200, 100, 64)
    np.testing.assert_allclose(boxes, [[0, 0, 64, 64], [0, 0, 0, 32]])


def test_without_boxes_regions_are_a_multiscale_grid():
    boxes = region_boxes(90, 60, None)
    assert len(boxes) == 1 + 4 + 9
    np.testing.assert_allclose(boxes[0], [0, 0, 90, 60])
    np.testing.assert_allclose(boxes[1], [0, 0, 45, 30])


def test_canvas_crops_keep_the_box_in_place_and_blank_the_rest():
    picture = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
    crop = np.asarray(_crop(picture, np.array([10, 5, 20, 15]), "canvas", (1, 2, 3)))
    assert crop.shape == (20, 30, 3)
    assert (crop[5:15, 10:20] == 200).all() and (crop[0, 0] == (1, 2, 3)).all()
    assert _crop(picture, np.array([10, 5, 20, 15]), "resize", (0, 0, 0)).size == (10, 10)


@pytest.fixture(scope="module")
def world_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    world = generate(str(root / "world"), WorldConfig(n_train=16, n_test=24, image_size=64, seed=2))
    run_extract(world["jsonl"]["test_id"], "bivlc", "test", root / "store", request=DENSE)
    store = open_store(root / "store")
    return store.space("vlcache-tiny"), store.dataset("test")


def test_diagnostic_scores_are_the_mean_of_best_segment_matches(world_store):
    space, dataset = world_store
    regions = pooled_regions(space, dataset, "values")
    report = diagnose(space, dataset, regions)
    item = dataset.items.to_pylist()[0]
    segments = next(t["segments"] for t in dataset.texts.to_pylist() if t["hash"] == item["caption"])
    text = space.read("text_global", space.rows("texts", [text_hash(s) for s in segments])).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    expected = (text @ regions.by_hash[item["image"]].T).max(axis=1).mean()
    scores = report["item_scores"]
    assert scores["positive"][scores["item_id"].index(item["item_id"])] == pytest.approx(expected, abs=1e-5)
    assert report["encoder_passes_per_image"] == 1 and "bivlc" in report
    image = next(i for i in dataset.images.to_pylist() if i["hash"] == item["image"])
    assert len(regions.by_hash[item["image"]]) == len(image["boxes"])


def test_crops_cost_one_encoder_pass_per_region(world_store):
    space, dataset = world_store
    regions = crop_regions(encoder_for(space), dataset, "canvas")
    boxes = {i["hash"]: len(i["boxes"]) for i in dataset.images.to_pylist()}
    assert {h: len(r) for h, r in regions.by_hash.items()} == boxes
    assert regions.passes_per_image == pytest.approx(1 + np.mean(list(boxes.values())))  # extraction's pass too
    report = diagnose(space, dataset, regions)
    assert 0 <= report["caption_accuracy"]["by_subset"]["all"] <= 1
    assert report["head"] == "diagnostic, crops (canvas)"


def test_pooling_raw_tokens_needs_a_projected_space(tmp_path, world_store):
    _, dataset = world_store
    rows = dataset.items.to_pylist()[:2]
    uris = {i["hash"]: i["uri"] for i in dataset.images.to_pylist()}
    (tmp_path / "t.jsonl").write_text("".join(
        f'{{"image": "{uris[r["image"]]}", "caption": "x{i}"}}\n' for i, r in enumerate(rows)))
    run_extract(tmp_path / "t.jsonl", "jsonl", "raw", tmp_path / "store")
    store = open_store(tmp_path / "store")
    with pytest.raises(VlcacheError, match="stores no 'values' features to pool"):
        pooled_regions(store.space("vlcache-tiny"), store.dataset("raw"), "values")
