"""The positive control: a world whose answer is known to be in the tokens, encoded by
`ControlEncoder` through the normal extraction path. A head must pass it (high accuracy on swaps,
in-domain and on unseen colour-shape pairs) before any result of it on a real encoder means
anything; global cosine and global-mlp must fail it (chance on swaps), or the control is broken."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from pipeline.encoders import EncoderRequest
from pipeline.extract import ExtractOptions, extract
from workflows.world import WorldConfig, generate

from .encoder import NAME as ENCODER_NAME

MODEL = "vlcache-control"
REQUEST = EncoderRequest(MODEL, encoder=ENCODER_NAME)
SPLITS = ("train", "test_id", "test_ood")
# Colour-shape binding and nothing else: one attribute, no relations, swaps and replaced colours;
# a quarter of the colour-shape pairs never appear in train or test_id.
WORLD = WorldConfig(n_train=4000, n_test=500, image_size=64, min_objects=2, max_objects=3, attributes=("colour",),
                    textures=("solid",), relations=False, negatives=("swap_att", "replace_att"), hard_swaps=1.0)


@dataclass(frozen=True)
class ControlStore:
    store: str  # the store's URI
    datasets: dict[str, str]  # split -> dataset name ("control-train", ...)
    world: dict[str, Any]  # what workflows.world.generate returned


def build_control(out: str, world: WorldConfig = WORLD, workers=None, progress: bool = False) -> ControlStore:
    """Generate the control world under out/world and extract it into out/store (`workers`: started
    Dask workers to reuse, `pipeline.cluster.start_workers`)."""
    generated = generate(os.path.join(out, "world"), world)
    store = os.path.join(out, "store")
    datasets = {split: f"control-{split}" for split in generated["jsonl"]}
    for split, name in datasets.items():
        extract(generated["jsonl"][split], "bivlc", name, REQUEST, store, workers=workers,
                options=ExtractOptions(progress=progress))
    return ControlStore(store, datasets, generated)


def scaled(n_train: int, n_test: int, seed: int = 0) -> WorldConfig:
    return replace(WORLD, n_train=n_train, n_test=n_test, seed=seed)


__all__ = ["MODEL", "REQUEST", "WORLD", "ControlStore", "build_control", "scaled"]
