"""The positive control: a plug-in encoder through the normal extraction path, a control that is
valid (global methods at chance on swaps), and heads that pass it."""

import json

import numpy as np
import pytest
from PIL import Image

from cache_schemas import open_store
from pipeline.encoders import EncoderRequest, UnknownModelError, describe
from trainer.evaluate import evaluate
from trainer.heads import Dims, build_head
from trainer.train import train
from workflows.cli import main
from workflows.control import MODEL, REQUEST, build_control, scaled
from workflows.control.encoder import NAME, perceive, phrases
from workflows.results import headline


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    return build_control(str(tmp_path_factory.mktemp("control")), scaled(n_train=600, n_test=160))


def _swap(report):
    return headline(report)["attribute swap"]


def test_the_encoder_sees_every_object_of_every_scene(control):
    root = control.world["world"].rsplit("/", 1)[0]
    for split, path in control.world["jsonl"].items():
        with open(path) as f:
            rows = [json.loads(line) for line in f]
        for row in rows:
            for image, scene in ((row["image"], row["scene"]), (row["negative_image"], row["negative_scene"])):
                with Image.open(f"{root}/{image}") as picture:
                    seen, _ = perceive(np.asarray(picture.convert("RGB")))
                assert sorted(seen) == sorted((o["colour"], o["shape"]) for o in scene), (split, image)


def test_captions_are_read_as_phrases():
    assert phrases("two red circles , a blue square and a green cross".split()) == [
        ("red", "circle", 2), ("blue", "square", 1), ("green", "cross", 1)]


def test_the_control_is_valid_global_methods_fail_swaps_and_pass_replacements(control, tmp_path):
    store = open_store(control.store)
    space = store.space(store.space_keys()[0])
    assert space.spec.encoder == NAME and space.spec.text_trim == "causal"
    for split in ("test_id", "test_ood"):
        h = headline(evaluate(space, store.dataset(control.datasets[split]), build_head("global", Dims.of(space.spec))))
        assert h["attribute swap"] <= 0.65 and h["replace"] >= 0.95, (split, h)


@pytest.mark.parametrize("head", ["tflocal", "maxsim"])
def test_trained_local_heads_pass_a_small_control_at_their_default_settings(head, control, tmp_path):
    config = tmp_path / "short.json"  # fewer steps than the library's default run; the head's own settings
    config.write_text(json.dumps({"train": {"steps": 200, "batch_size": 32, "warmup_steps": 20, "in_batch_negatives": 4,
                                            "retrieval_k": 2}}))
    reports = train(control.store, "control-train", head, str(tmp_path / "run"),
                    eval_datasets=["control-test_id", "control-test_ood"], config_path=str(config), progress=False)
    assert _swap(reports["control-test_id"]) >= 0.9 and _swap(reports["control-test_ood"]) >= 0.85, reports
    assert reports["control-test_id"]["training"]["status"] == "learning"


def test_global_mlp_cannot_pass_the_control(control, tmp_path):
    config = tmp_path / "short.json"
    config.write_text(json.dumps({"train": {"steps": 100, "retrieval_k": 2}}))
    reports = train(control.store, "control-train", "global-mlp", str(tmp_path / "run"),
                    eval_datasets=["control-test_id", "control-test_ood"], config_path=str(config), progress=False)
    assert all(_swap(r) <= 0.65 for r in reports.values()), reports


def test_extraction_through_the_cli_with_a_plug_in_encoder(control, tmp_path, capfd):
    source = control.world["jsonl"]["test_id"]
    args = ["extract", source, "--format", "bivlc", "--dataset", "again", "--model", MODEL, "--encoder", NAME,
            "--store", str(tmp_path / "store"), "--quiet"]
    assert main(args) == 0
    store = open_store(tmp_path / "store")
    (key,) = store.space_keys()
    assert key == describe(REQUEST).key and store.space(key).spec.encoder == NAME
    original = open_store(control.store).space(key)
    rows = store.space(key).rows("images", store.dataset("again").images["hash"].to_pylist()[:5])
    same = original.rows("images", store.dataset("again").images["hash"].to_pylist()[:5])
    np.testing.assert_array_equal(store.space(key).read("image_patches", rows), original.read("image_patches", same))


@pytest.mark.parametrize("encoder, expected", [
    ("no.such.module:Encoder", "cannot import no.such.module"),
    ("json:dumps", "is not a subclass of pipeline.encoders.Encoder"),
    ("workflows.control.encoder:Nothing", "has no Nothing"),
    ("nocolon", "must be 'open_clip' or 'module:Class'"),
])
def test_a_bad_plug_in_is_refused_in_one_line(encoder, expected, control, tmp_path, capfd):
    args = ["extract", control.world["jsonl"]["test_id"], "--format", "bivlc", "--dataset", "x", "--model", MODEL,
            "--encoder", encoder, "--store", str(tmp_path / "store")]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_the_control_encoder_refuses_what_it_cannot_store():
    with pytest.raises(UnknownModelError, match="control encoder stores image tokens"):
        describe(EncoderRequest(MODEL, encoder=NAME, image_tokens=("patches", "values")))
