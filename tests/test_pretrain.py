"""Pretraining on a tiny world: the checkpoint loads through open_clip and vlcache's encoder, a seed
fixes the weights, and the contrastive loss falls."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from pipeline.encoders import EncoderRequest, describe, load_encoder
from workflows.world import WorldConfig, generate
from workflows.world.pretrain import PretrainConfig, PretrainConfigError, pretrain

TINY_WORLD = WorldConfig(n_train=64, n_test=16, image_size=64)
FEW_STEPS = PretrainConfig(steps=3, warmup=1, batch_size=16, threads=1)


@pytest.fixture(scope="module")
def train_jsonl(tmp_path_factory: pytest.TempPathFactory) -> str:
    return generate(str(tmp_path_factory.mktemp("world")), TINY_WORLD)["jsonl"]["train"]


@pytest.fixture(scope="module")
def checkpoint(train_jsonl: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    path = str(tmp_path_factory.mktemp("pretrain") / "world.pt")
    return path, pretrain(train_jsonl, path, FEW_STEPS)


def test_checkpoint_loads_in_open_clip(checkpoint: tuple[str, dict]) -> None:
    path, stats = checkpoint
    model = open_clip.create_model("vlcache-world", pretrained=path)
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert stats["steps"] == 3 and stats["n_pairs"] == 64 and np.isfinite(stats["final_loss"])
    with open(f"{path}.json", encoding="utf-8") as f:
        assert json.load(f)["config"]["seed"] == FEW_STEPS.seed


def test_checkpoint_loads_in_the_encoder(checkpoint: tuple[str, dict]) -> None:
    path, _ = checkpoint
    space = describe(EncoderRequest("vlcache-world", pretrained=path))
    assert space.weights.startswith("sha256:") and space.dims["patches"] == 64
    encoder = load_encoder(space, path)
    ids, n_tokens = encoder.tokenize(["a red circle and a blue square"])
    tokens, pooled = encoder.encode_texts(ids, n_tokens)
    arrays = encoder.encode_images(torch.zeros(1, 3, 64, 64))
    assert tokens[0].shape == (n_tokens[0], 128) and pooled.shape == (1, 128)
    assert arrays["image_patches"].shape == (1, 64, 128)


def test_same_seed_same_weights(train_jsonl: str, checkpoint: tuple[str, dict], tmp_path: str) -> None:
    path, _ = checkpoint
    again, other = os.path.join(tmp_path, "again.pt"), os.path.join(tmp_path, "other.pt")
    pretrain(train_jsonl, again, FEW_STEPS)
    pretrain(train_jsonl, other, replace(FEW_STEPS, seed=1))
    first, second, third = (torch.load(p, weights_only=True) for p in (path, again, other))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["visual.proj"], third["visual.proj"])


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_falls_below_chance(train_jsonl: str, tmp_path: str, seed: int) -> None:
    """ln(batch) is the loss of features that tell no pair apart, where a bad start can stall."""
    config = PretrainConfig(steps=40, warmup=4, batch_size=16, lr=1e-3, threads=1, seed=seed)
    losses = pretrain(train_jsonl, os.path.join(tmp_path, "fit.pt"), config)["losses"]
    assert np.mean(losses[-5:]) < 0.85 * np.log(config.batch_size)


def test_context_fits_five_object_captions(tmp_path: str) -> None:
    """vlcache-world's context holds every caption of scenes of up to 5 objects (default vocabularies)."""
    result = generate(str(tmp_path), WorldConfig(n_train=200, n_test=50, image_size=64, min_objects=4, max_objects=5))
    texts = []
    for path in result["jsonl"].values():
        with open(path, encoding="utf-8") as f:
            texts += [r[k] for r in map(json.loads, f) for k in ("caption", "negative_caption")]
    ids = open_clip.get_tokenizer("vlcache-world")(texts)
    assert (ids[:, -1] == 0).all()


@pytest.mark.parametrize("kwargs, message", [({"steps": 0}, "steps"), ({"batch_size": 1}, "batch_size"),
                                             ({"steps": 5, "warmup": 5}, "warmup")])
def test_invalid_configs_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(PretrainConfigError, match=message):
        PretrainConfig(**kwargs)


def test_demo_reuses_an_encoder_only_for_the_same_train_split(train_jsonl: str, tmp_path: str) -> None:
    from workflows.demo import _pretrained_encoder

    out = str(tmp_path)
    path = _pretrained_encoder(out, train_jsonl, FEW_STEPS, progress=False)
    made = os.stat(path).st_mtime_ns
    assert _pretrained_encoder(out, train_jsonl, FEW_STEPS, progress=False) == path
    assert os.stat(path).st_mtime_ns == made
    fewer = os.path.join(os.path.dirname(train_jsonl), "fewer.jsonl")  # beside the images it names
    with open(train_jsonl, encoding="utf-8") as src, open(fewer, "w", encoding="utf-8") as dst:
        dst.writelines(src.readlines()[:-1])
    _pretrained_encoder(out, fewer, FEW_STEPS, progress=False)
    assert os.stat(path).st_mtime_ns != made
