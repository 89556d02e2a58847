"""`vlcache finetune`: a tiny random-init open_clip model fine-tuned end to end on the CPU; its
checkpoint extracts into its own space of the same store, which `vlcache eval` reads."""

import json
import shutil

import numpy as np
import pytest
import torch

from cache_schemas import open_store
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loop import Pairs, _batch, finetune
from tests.conftest import TINY, run_extract
from workflows.cli import main

FAST = FinetuneConfig(steps=40, batch_size=8, lr=5e-4, warmup_steps=2, checkpoint_every=10, hard_negatives=True)


@pytest.fixture(scope="module")
def tuned(small_store, small_sugarcrepe, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "run"
    record = finetune(str(small_store), "sc", TINY, str(out), config=FAST, split=None, progress=False)
    return out, record


def test_the_loss_falls_and_the_record_says_how_to_extract_it(tuned):
    out, record = tuned
    losses = torch.load(out / "state.pt", weights_only=False)["losses"]
    assert len(losses) == FAST.steps
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert record["health"]["status"] == "learning"
    assert json.loads((out / "model.pt.json").read_text())["extract"] == {"model": "vlcache-tiny",
                                                                          "pretrained": str(out / "model.pt")}


def test_the_checkpoint_extracts_into_its_own_space_and_eval_reads_it(tuned, small_store, small_sugarcrepe, tmp_path,
                                                                        capsys):
    out, record = tuned
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    annotations, images = small_sugarcrepe
    run_extract(annotations, "sugarcrepe", "sc", store, images_root=images,
                request=TINY.__class__("vlcache-tiny", pretrained=str(out / "model.pt")))
    opened = open_store(str(store))
    tuned_key = next(k for k in opened.space_keys() if opened.space(k).spec.weights.startswith("sha256:"))
    assert opened.space(tuned_key).spec.weights == f"sha256:{record['sha256']}"
    assert len(opened.space_keys()) == 2
    frozen_key = next(k for k in opened.space_keys() if k != tuned_key)
    tuned_global = opened.space(tuned_key).array("image_global")[:]
    assert not np.array_equal(tuned_global, opened.space(frozen_key).array("image_global")[:])
    accuracy = {}
    for key in (frozen_key, tuned_key):
        assert main(["eval", "--store", str(store), "--dataset", "sc", "--head", "global", "--space", key,
                     "--out", str(tmp_path / key), "--quiet"]) == 0
        report = json.loads((tmp_path / key / "report.json").read_text())
        assert report["space"] == key
        accuracy[key] = report["caption_accuracy"]["by_subset"]["all"]
    # In domain, with the dataset's own hard negatives: fine-tuning must have learned them.
    assert accuracy[tuned_key] >= accuracy[frozen_key] + 0.2, accuracy


def test_a_run_stopped_by_an_unreadable_image_resumes_to_the_same_weights(medium_sugarcrepe, tmp_path, capsys):
    """An image that stops reading mid-run ends the run in one line; put back, --resume finishes it with
    the weights of a run never stopped, bit for bit."""
    annotations, images = medium_sugarcrepe
    copied = tmp_path / "images"
    shutil.copytree(images, copied)
    store = tmp_path / "store"
    run_extract(annotations, "sugarcrepe", "sc", store, images_root=str(copied))
    config = FinetuneConfig(steps=8, batch_size=8, lr=5e-4, warmup_steps=2, checkpoint_every=2)
    finetune(str(store), "sc", TINY, str(tmp_path / "straight"), config=config, split=None, progress=False)
    pairs = Pairs.of(open_store(str(store)).dataset("sc"), None, negatives=False)
    early = {i for step in range(2) for i in _batch(pairs, config, step).image_rows.tolist()}
    later = next(i for step in range(2, 5) for i in _batch(pairs, config, step).image_rows.tolist() if i not in early)
    shutil.move(pairs.uris[later], tmp_path / "moved")
    args = ["finetune", "--store", str(store), "--dataset", "sc", "--model", "vlcache-tiny", "--split", "",
            "--out", str(tmp_path / "run"), "--steps", "8", "--batch-size", "8", "--lr", "0.0005", "--warmup-steps",
            "2", "--checkpoint-every", "2", "--quiet"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot fine-tune on" in error, error
    stopped_at = torch.load(tmp_path / "run" / "state.pt", weights_only=False)["step"]
    assert 2 <= stopped_at < 8 and not (tmp_path / "run" / "model.pt").exists()
    shutil.move(tmp_path / "moved", pairs.uris[later])
    assert main([*args, "--resume"]) == 0
    straight, resumed = torch.load(tmp_path / "straight" / "model.pt"), torch.load(tmp_path / "run" / "model.pt")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


@pytest.mark.parametrize("changed, message", [
    ({"--dataset": "nope"}, "no dataset 'nope'"),
    ({"--split": "train"}, "no item"),
    ({"--model": "no-such-model"}, "no-such-model"),
    ({"--pretrained": "/nonexistent.pt"}, "neither a file nor a tag"),
    ({"--steps": "0"}, "steps must be >= 1"),
    ({"--batch-size": "1"}, "batch_size must be >= 2"),
    ({"--blocks": "-1"}, "blocks must be >= 0"),
    ({"--resume": None}, "holds no fine-tuning run"),
])
def test_bad_input_is_one_line(small_store, tmp_path, capsys, changed, message):
    options = {"--store": str(small_store), "--dataset": "sc", "--model": "vlcache-tiny",
               "--out": str(tmp_path / "run"), "--split": "", "--quiet": None, **changed}
    args = ["finetune"] + [part for flag, value in options.items() for part in (flag, value) if part is not None]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
