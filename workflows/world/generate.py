"""`generate`: write a world's splits: PNGs under images/<split>/, one JSONL per split (rows the
`jsonl` and `bivlc` readers take), and world.json (config, counts, held-out combinations).

Each item draws from its own random stream, seeded by (seed, split, index), so no item depends on
the ones before it and the same config writes byte-identical files."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np

from .captions import Caption, alt_text, caption_for, judge, plan, region_boxes, segments, text
from .config import WorldConfig
from .negatives import LABELS, Context, Negative, find_negative
from .render import render
from .scene import Pools, Scene, make_pools, sample_scene

SPLITS = ("train", "test_id", "test_ood")
VERSION = 2  # bump when the same config would write different files
SCENE_TRIES = 50  # scenes drawn for one item before the world is declared unable to make it
HARD_TRIES = 20  # of those, built for a hard swap before settling for any negative


def generate(out_dir: str, config: WorldConfig = WorldConfig()) -> dict[str, Any]:
    """Write the world; returns {"jsonl": {split: path}, "counts": {split: {subset: n, "total": n}},
    "world": path of world.json}."""
    pools = make_pools(config)
    paths, counts = {}, {}
    for split, n in config.splits().items():
        paths[split], counts[split] = _write_split(out_dir, split, n, config, pools)
    world = os.path.join(out_dir, "world.json")
    with open(world, "w", encoding="utf-8") as f:
        json.dump({"version": VERSION, "config": asdict(config), "held_out": [list(c) for c in pools.held_out],
                   "counts": counts}, f, indent=2)
    return {"jsonl": paths, "counts": counts, "world": world}


def _write_split(out_dir: str, split: str, n: int, config: WorldConfig, pools: Pools) -> tuple[str, dict[str, int]]:
    os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
    path = os.path.join(out_dir, f"{split}.jsonl")
    subsets: Counter[str] = Counter()
    with open(path, "w", encoding="utf-8") as f:
        for index in range(n):
            row = _item(out_dir, split, index, config, pools)
            f.write(json.dumps(row) + "\n")
            subsets[row["subset"]] += 1
    return path, {**dict(sorted(subsets.items())), "total": n}


def _item(out_dir: str, split: str, index: int, config: WorldConfig, pools: Pools) -> dict[str, Any]:
    """One scene, its caption and its negative: two PNGs written, the JSONL row returned."""
    rng = _stream(config, split, index)
    kind = config.negatives[index % len(config.negatives)]  # round-robin keeps the kinds balanced
    hard = kind == "swap_att" and _stream(config, split, index, 2).random() < config.hard_swaps
    scene, caption, negative = _sample(rng, config, pools, split == "test_ood", kind, hard)
    stem = f"images/{split}/{index:06d}"
    image, negative_image = f"{stem}.png", f"{stem}_neg.png"
    render(scene, config.image_size).save(os.path.join(out_dir, image))
    render(negative.scene, config.image_size).save(os.path.join(out_dir, negative_image))
    kind_type, subtype = LABELS[negative.kind]
    row = {
        "item_id": f"{split}-{index:06d}", "image": image, "caption": text(caption),
        "negative_caption": text(negative.caption), "negative_image": negative_image,
        "type": kind_type, "subtype": subtype, "subset": negative.subset, "split": split,
        "boxes": region_boxes(caption, scene), "negative_image_boxes": region_boxes(negative.caption, negative.scene),
        "caption_segments": segments(caption), "negative_caption_segments": segments(negative.caption),
        "scene": _objects(scene), "negative_scene": _objects(negative.scene),
    }
    if config.alt_text:  # its own random stream, so the rest of the row is the same either way
        loose = alt_text(_stream(config, split, index, 1), caption)
        row["alt_text"] = text(loose)
    return row


def _stream(config: WorldConfig, split: str, index: int, *side: int) -> np.random.Generator:
    """The item's random stream; `side` streams draw optional choices without shifting the main one."""
    return np.random.default_rng([config.seed, SPLITS.index(split) + 1, index, *side])


def _sample(rng: np.random.Generator, config: WorldConfig, pools: Pools, ood: bool,
            kind: str, hard: bool) -> tuple[Scene, Caption, Negative]:
    """A scene, its caption and a negative of `kind` (or the next kind that fits); a hard swap when
    `hard`, unless HARD_TRIES scenes built for one all fail the negative's checks."""
    for attempt in range(SCENE_TRIES):
        want_hard = hard and attempt < HARD_TRIES
        scene = sample_scene(rng, config, pools, ood, twins=kind == "count", hard_pair=want_hard)
        p = plan(rng, scene, config)
        caption = caption_for(scene, p, config)
        if caption is None or judge(caption, scene, config.image_size) is not True:  # plan() picks true relations
            raise RuntimeError(f"internal error: a planned caption is false of its scene {scene}")
        negative = find_negative(Context(rng, scene, p, config, pools, ood), caption, kind)
        if negative is not None and (negative.subset == "swap_att_hard" or not want_hard):
            return scene, caption, negative
    raise RuntimeError(f"no negative of kinds {list(config.negatives)} fits {SCENE_TRIES} scenes "
                       f"of this world; allow more kinds in WorldConfig.negatives")


def _objects(scene: Scene) -> list[dict[str, Any]]:
    """Ground truth of a scene, for checks and analyses (readers ignore it)."""
    return [{"shape": o.shape, "colour": o.colour, "size": o.size, "texture": o.texture, "box": list(o.box)}
            for o in scene]
