"""A small SugarCrepe-format example set, generated on the spot: the test suite's and the benchmarks'
stand-in for the real benchmark (same file layout, same subset sizes on request).

Images are flat-coloured PNGs with a few shapes; many items share an image and a caption, as in
SugarCrepe, where COCO images and captions recur across subsets."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

# Items per subset in the real benchmark (7,511 in all).
SUGARCREPE_SIZES = {"add_att": 692, "add_obj": 2062, "replace_att": 788, "replace_obj": 1652,
                    "replace_rel": 1406, "swap_att": 666, "swap_obj": 245}
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")


def write_sugarcrepe_example(out_dir: str, sizes: dict[str, int] | None = None, n_images: int = 300,
                             image_size: int = 48, seed: int = 0, image_format: str = "png") -> tuple[str, str]:
    """Write `out_dir/annotations/<subset>.json` and `out_dir/images/*.<image_format>` (png, or jpg as
    photo collections hold them); return both folders."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {name: max(1, n // 50) for name, n in SUGARCREPE_SIZES.items()}
    annotations, images = os.path.join(out_dir, "annotations"), os.path.join(out_dir, "images")
    os.makedirs(annotations, exist_ok=True)
    os.makedirs(images, exist_ok=True)
    scenes = [_scene(rng) for _ in range(n_images)]
    for i, scene in enumerate(scenes):
        _render(scene, image_size, rng).save(os.path.join(images, f"{i:06d}.{image_format}"))
    for subset, n in sizes.items():
        entries = {}
        for k in range(n):
            index = int(rng.integers(n_images))
            caption, negative = _captions(scenes[index], subset, rng)
            entries[str(k)] = {"filename": f"{index:06d}.{image_format}", "caption": caption,
                               "negative_caption": negative}
        with open(os.path.join(annotations, f"{subset}.json"), "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
    return annotations, images


def _scene(rng: np.random.Generator) -> list[tuple[str, str]]:
    colours = rng.choice(list(COLOURS), size=2, replace=False)
    return [(str(c), str(rng.choice(SHAPES))) for c in colours]


def _render(scene: list[tuple[str, str]], size: int, rng: np.random.Generator) -> Image.Image:
    # A noisy background makes every image's bytes unique, like photos.
    background = rng.integers(170, 230, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for slot, (colour, shape) in enumerate(scene):
        x0, y0 = 4 + slot * size // 2, size // 4
        box = (x0, y0, x0 + size // 2 - 8, y0 + size // 2 - 8)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return image


def _captions(scene: list[tuple[str, str]], subset: str, rng: np.random.Generator) -> tuple[str, str]:
    """A true caption of the scene and a false one of the subset's kind. Captions come from a small
    template space on purpose, so the same caption recurs across items."""
    (c1, s1), (c2, s2) = scene
    caption = f"a {c1} {s1} and a {c2} {s2}"
    other = next(c for c in COLOURS if c not in (c1, c2))
    new_shape = next(s for s in SHAPES if s not in (s1, s2))  # 3 shapes, at most 2 in a scene
    negatives = {
        "swap_att": f"a {c2} {s1} and a {c1} {s2}",
        "swap_obj": f"a {c1} {s2} and a {c2} {s1}" if s1 != s2 else f"a {c2} {s1} and a {c1} {s2}",
        "replace_att": f"a {other} {s1} and a {c2} {s2}",
        "replace_obj": f"a {c1} {new_shape} and a {c2} {s2}",
        "replace_rel": f"a {c1} {s1} behind a {c2} {s2}",
        "add_att": f"a {c1} {s1} and a {c2} {other} {s2}",
        "add_obj": f"a {c1} {s1}, a {c2} {s2} and a {other} {rng.choice(SHAPES)}",
    }
    if subset == "replace_rel":
        caption = f"a {c1} {s1} next to a {c2} {s2}"
    return caption, negatives[subset]
