"""The scene world, checked from the outside: files the readers take, captions read back with a
parser of their own and judged against each row's ground-truth scene and pixels, held-out
combinations, determinism, and config validation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from pipeline.readers import read_source
from workflows.world import WorldConfig, WorldConfigError, generate
from workflows.world.config import PALETTE, SHAPES, TEXTURES
from workflows.world.render import BACKGROUND

SMALL = WorldConfig(n_train=150, n_test=40, image_size=64, max_objects=4, seed=7)
SUBSETS = {"swap_att", "swap_att_hard", "swap_obj", "replace_att", "replace_rel", "add_obj", "count"}
OPPOSITE = {"left of": "right of", "above": "below", "bigger than": "smaller than"}
OPPOSITE |= {v: k for k, v in OPPOSITE.items()}
NUMBERS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}
FIELD_OF = {**{c: "colour" for c in PALETTE}, **{t: "texture" for t in TEXTURES}, "small": "size", "large": "size"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("world"))
    return out, generate(out, SMALL)


def rows(out: str, split: str) -> list[dict]:
    with open(os.path.join(out, f"{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def all_rows(out: str) -> list[dict]:
    return [r for split in ("train", "test_id", "test_ood") for r in rows(out, split)]


# An independent reading of the caption language: "<mention>, <mention> and <mention>; <relation>".

def parse_words(words: list[str]) -> dict[str, str]:
    *attributes, shape = words
    return {"shape": shape, **{FIELD_OF[w]: w for w in attributes}}


def parse_mention(text: str) -> tuple[int, dict[str, str]]:
    number, *words = text.split()
    count = NUMBERS[number]
    if count > 1:  # "crosses", "circles"
        words[-1] = words[-1][:-2] if words[-1].endswith(("sses", "xes")) else words[-1][:-1]
    assert words[-1] in SHAPES, text
    return count, parse_words(words)


def parse(caption: str) -> tuple[list[tuple[int, dict]], tuple[dict, str, dict] | None]:
    listing, _, relation = caption.partition("; ")
    mentions = [parse_mention(m) for m in re.split(r", | and ", listing)]
    if not relation:
        return mentions, None
    match = re.fullmatch(r"the (.+) is (left of|right of|above|below|bigger than|smaller than) the (.+)", relation)
    assert match, relation
    return mentions, (parse_words(match[1].split()), match[2], parse_words(match[3].split()))


def fits(obj: dict, what: dict) -> bool:
    return all(obj[field] == value for field, value in what.items())


def related(a: dict, b: dict, kind: str) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return {"left of": ax1 <= bx0, "right of": bx1 <= ax0, "above": ay1 <= by0, "below": by1 <= ay0,
            "bigger than": ax1 - ax0 > bx1 - bx0, "smaller than": ax1 - ax0 < bx1 - bx0}[kind]


def true_of(caption: str, scene: list[dict]) -> bool:
    """Exactly the listed objects, in the listed numbers, and the relation between two unique ones."""
    mentions, relation = parse(caption)
    if any(sum(fits(o, what) for o in scene) != n for n, what in mentions):
        return False
    if any(sum(fits(o, what) for _, what in mentions) != 1 for o in scene):
        return False
    if relation is None:
        return True
    subjects = [o for o in scene if fits(o, relation[0])]
    others = [o for o in scene if fits(o, relation[2])]
    return len(subjects) == len(others) == 1 and related(subjects[0], others[0], relation[1])


def combos(scene: list[dict]) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in scene}


# Tests

def test_readers_take_every_split(world: tuple[str, dict]) -> None:
    out, result = world
    for split, n in (("train", 150), ("test_id", 40), ("test_ood", 40)):
        assert result["jsonl"][split] == os.path.join(out, f"{split}.jsonl")
        assert result["counts"][split]["total"] == n
        for fmt in ("jsonl", "bivlc"):
            dataset = read_source(result["jsonl"][split], fmt)
            assert len(dataset.items) == n and {i.split for i in dataset.items} == {split}
            for item in dataset.items:
                assert os.path.isfile(item.image) and os.path.isfile(item.negative_images[0])
                assert item.subset in SUBSETS and len(item.negative_captions) == 1
                assert dataset.segments[item.caption] and dataset.boxes[item.image]
    info = read_json(result["world"])
    assert info["counts"] == result["counts"]
    assert WorldConfig(**info["config"]) == SMALL


def test_every_subset_appears(world: tuple[str, dict]) -> None:
    out, result = world
    assert set(result["counts"]["train"]) - {"total"} == SUBSETS
    types = {(r["subset"], r["type"], r["subtype"]) for r in rows(out, "train")}
    assert ("swap_att_hard", "swap", "att") in types and ("replace_rel", "replace", "rel") in types


def test_captions_true_and_negatives_false(world: tuple[str, dict]) -> None:
    for r in all_rows(world[0]):
        assert true_of(r["caption"], r["scene"]), r["item_id"]
        assert true_of(r["negative_caption"], r["negative_scene"]), r["item_id"]
        assert not true_of(r["negative_caption"], r["scene"]), r["item_id"]
        assert not true_of(r["caption"], r["negative_scene"]), r["item_id"]


def test_negatives_edit_what_their_kind_says(world: tuple[str, dict]) -> None:
    for r in all_rows(world[0]):
        (mentions, relation), (neg_mentions, neg_relation) = parse(r["caption"]), parse(r["negative_caption"])
        if r["subset"] == "replace_rel":
            assert neg_mentions == mentions and neg_relation == (relation[0], OPPOSITE[relation[1]], relation[2])
        elif r["subset"] == "swap_obj":
            assert neg_mentions == mentions and neg_relation == (relation[2], relation[1], relation[0])
        elif r["subset"] == "add_obj":
            assert len(r["negative_scene"]) == len(r["scene"]) + 1 and len(neg_mentions) == len(mentions) + 1
        elif r["subset"] == "count":
            assert abs(len(r["negative_scene"]) - len(r["scene"])) == 1
            assert sorted(n for n, _ in neg_mentions) != sorted(n for n, _ in mentions)
        elif r["subset"].startswith("swap_att"):
            a, b = [i for i, (o, n) in enumerate(zip(r["scene"], r["negative_scene"])) if o != n]
            old, new = r["scene"], r["negative_scene"]
            (f,) = [f for f in ("colour", "size", "texture") if old[a][f] != new[a][f]]  # one attribute
            assert new[a][f] == old[b][f] and new[b][f] == old[a][f]
            alike = all(old[a][g] == old[b][g] for g in ("colour", "size", "texture") if g != f)
            assert (r["subset"] == "swap_att_hard") == alike
        else:
            assert r["subset"] == "replace_att"
            ((i, f),) = [(i, f) for i, (o, n) in enumerate(zip(r["scene"], r["negative_scene"]))
                         for f in ("colour", "size", "texture") if o[f] != n[f]]  # one value of one object
            assert r["negative_scene"][i][f] not in {o[f] for o in r["scene"]}


def test_held_out_combinations_only_in_ood(world: tuple[str, dict]) -> None:
    out, result = world
    held = {tuple(c) for c in read_json(result["world"])["held_out"]}
    assert len(held) == round(0.25 * len(SMALL.colours) * len(SMALL.shapes))
    for split in ("train", "test_id"):
        for r in rows(out, split):
            assert not combos(r["scene"]) & held and not combos(r["negative_scene"]) & held
    assert all(combos(r["scene"]) & held for r in rows(out, "test_ood"))
    train = set().union(*(combos(r["scene"]) for r in rows(out, "train")))
    assert {c for c, _ in train} == set(SMALL.colours) and {s for _, s in train} == set(SMALL.shapes)


def test_boxes_match_the_pixels(world: tuple[str, dict]) -> None:
    out, size = world[0], SMALL.image_size
    for r in rows(out, "train")[:60]:
        for image, scene, boxes, caption in (
                ("image", "scene", "boxes", "caption"),
                ("negative_image", "negative_scene", "negative_image_boxes", "negative_caption")):
            objects, pixels = r[scene], read_pixels(os.path.join(out, r[image]))
            assert pixels.shape == (size, size, 3)
            for a, b in combinations(objects, 2):  # cells never overlap
                assert min(a["box"][2], b["box"][2]) <= max(a["box"][0], b["box"][0]) or \
                    min(a["box"][3], b["box"][3]) <= max(a["box"][1], b["box"][1])
            background = np.ones((size, size), dtype=bool)
            for o in objects:
                x0, y0, x1, y1 = o["box"]
                assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
                cell = pixels[y0:y1, x0:x1].reshape(-1, 3)
                assert (cell == PALETTE[o["colour"]]).all(axis=1).mean() > 0.1  # drawn in its colour
                background[y0:y1, x0:x1] = False
            assert (pixels[background] == BACKGROUND).all()  # nothing outside the cells
            relation = parse(r[caption])[1]
            assert sorted(r[boxes][:len(objects)]) == sorted(o["box"] for o in objects)
            assert len(r[boxes]) == len(objects) + (relation is not None)
            if relation is not None:  # the last box spans the related pair
                pair = [o["box"] for o in objects if fits(o, relation[0]) or fits(o, relation[2])]
                x0s, y0s, x1s, y1s = zip(*pair)
                assert r[boxes][-1] == [min(x0s), min(y0s), max(x1s), max(y1s)]


def test_segments_cover_the_objects(world: tuple[str, dict]) -> None:
    for r in all_rows(world[0]):
        for caption, segments, scene in (("caption", "caption_segments", "scene"),
                                         ("negative_caption", "negative_caption_segments", "negative_scene")):
            mentions, relation = parse(r[caption])
            objects = [parse_mention(s) for s in r[segments][:len(mentions)]]
            assert objects == mentions and len(r[segments]) == len(mentions) + (relation is not None)
            assert all(sum(fits(o, what) for _, what in objects) == 1 for o in r[scene])
            if relation is not None:
                assert r[segments][-1] == r[caption].split("; ")[1]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: str) -> None:
    config = WorldConfig(n_train=20, n_test=6, image_size=64, seed=3)
    first, second, other = (str(tmp_path / name) for name in ("a", "b", "c"))
    generate(first, config)
    generate(second, config)
    generate(other, WorldConfig(n_train=20, n_test=6, image_size=64, seed=4))
    for name in ("train.jsonl", "test_id.jsonl", "test_ood.jsonl", "world.json"):
        assert read_bytes(os.path.join(first, name)) == read_bytes(os.path.join(second, name))
    for r in all_rows(first):
        for key in ("image", "negative_image"):
            assert np.array_equal(*(read_pixels(os.path.join(root, r[key])) for root in (first, second)))
    assert read_bytes(os.path.join(first, "train.jsonl")) != read_bytes(os.path.join(other, "train.jsonl"))


def test_alt_text_names_some_objects_and_changes_nothing_else(world: tuple[str, dict], tmp_path: str) -> None:
    out = str(tmp_path)
    generate(out, dataclasses.replace(SMALL, alt_text=True))
    plain = {r["item_id"]: r for r in all_rows(world[0])}
    lengths = []
    for r in all_rows(out):
        assert {k: v for k, v in r.items() if k != "alt_text"} == plain[r["item_id"]]
        mentions, relation = parse(r["alt_text"])
        assert relation is None and all(sum(fits(o, what) for o in r["scene"]) >= n for n, what in mentions)
        lengths.append(len(r["alt_text"]) < len(r["caption"]))
    assert "alt_text" not in plain["train-000000"] and np.mean(lengths) > 0.9


def test_world_without_relations_or_holdout(tmp_path: str) -> None:
    config = WorldConfig(n_train=30, n_test=10, image_size=64, attributes=("colour",), relations=False,
                         holdout=0, negatives=("swap_att", "replace_att", "add_obj"), seed=1)
    result = generate(str(tmp_path), config)
    assert set(result["jsonl"]) == {"train", "test_id"} and not os.path.exists(tmp_path / "test_ood.jsonl")
    for r in rows(str(tmp_path), "train"):
        assert ";" not in r["caption"] and len(r["boxes"]) == len(r["scene"])
        assert all(set(parse_mention(s)[1]) == {"colour", "shape"} for s in r["caption_segments"])
        assert r["subset"] in {"swap_att_hard", "replace_att", "add_obj"}  # shape + colour only: every swap is hard
    assert len(read_source(result["jsonl"]["train"], "bivlc").items) == 30


def test_hard_swaps_share_builds_scenes_for_them(tmp_path: str) -> None:
    """Scenes built for a hard swap make most swap items hard; without them random scenes make few."""
    def hard_share(share: float) -> float:
        out = str(tmp_path / str(share))
        generate(out, dataclasses.replace(SMALL, n_train=120, n_test=2, hard_swaps=share))
        swaps = [r["subset"] for r in rows(out, "train") if r["subset"].startswith("swap_att")]
        return np.mean([s == "swap_att_hard" for s in swaps])

    assert hard_share(1.0) > 0.8 and hard_share(0.0) < 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 32}, "image_size must be in 64..160"),
    ({"min_objects": 1}, "min_objects"),
    ({"max_objects": 6}, "max_objects"),
    ({"colours": ("red", "mauve")}, r"unknown colours \['mauve'\]"),
    ({"shapes": ("circle",)}, "shapes needs at least 2"),
    ({"attributes": ("colour", "weight")}, "unknown attributes"),
    ({"negatives": ("swap_att", "swap_att")}, "duplicates"),
    ({"relations": False}, "need relations=True"),
    ({"holdout": 0.75}, r"holdout must be in \[0, 0.5\]"),
    ({"hard_swaps": 1.5}, r"hard_swaps must be in \[0, 1\]"),
    ({"attributes": ("size",)}, "holdout > 0 needs 'colour'"),
    ({"seed": 1.5}, "seed: expected integers"),
    ({"colours": ("red", "blue"), "shapes": ("circle", "square"), "attributes": ("colour",), "holdout": 0.5},
     "only 2 distinct objects"),
])
def test_invalid_configs_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(WorldConfigError, match=message) as info:
        WorldConfig(**kwargs)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
