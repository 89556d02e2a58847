"""Scene graphs: objects with attributes, each in its own square cell, placed without overlap; the
held-out colour-shape combinations; and the geometry that decides which relations are true."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, product

import numpy as np

from .config import WorldConfig

FIELDS = ("size", "colour", "texture", "shape")  # also the order of words in a caption
Look = tuple[str, str, str, str]  # an object's values for FIELDS
SCALE = {"small": 0.15, "medium": 0.2, "large": 0.25}  # cell side over image side
JITTER = 0.015  # so small and large stay apart: 0.135..0.165 vs 0.235..0.265
RANK = {"small": 0, "medium": 1, "large": 2}
MARGIN = 2  # pixels kept clear at the image border
TRIES = 64  # positions drawn at once for one object
RESTARTS = 8  # fresh placements of a whole scene before it loses its last object
# A relation's two words along each axis; `direction` picks the true one.
AXES = {"horizontal": ("left of", "right of"), "vertical": ("above", "below"), "size": ("bigger than", "smaller than")}


@dataclass(frozen=True)
class Obj:
    size: str
    colour: str
    texture: str
    shape: str
    x0: int
    y0: int
    d: int  # side of the object's square cell; the shape is inscribed in it

    @property
    def look(self) -> Look:
        return (self.size, self.colour, self.texture, self.shape)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.d, self.y0 + self.d)


Scene = tuple[Obj, ...]


def gap(image_size: int) -> int:
    """Least clearance between two cells; also what a spatial relation needs, so every pair of
    objects is clearly left/right of or above/below each other."""
    return max(3, image_size // 24)


def holds(a: Obj, b: Obj, kind: str, image_size: int) -> bool:
    g = gap(image_size)
    if kind == "left of":
        return a.x0 + a.d + g <= b.x0
    if kind == "above":
        return a.y0 + a.d + g <= b.y0
    if kind == "bigger than":
        return RANK[a.size] > RANK[b.size]
    inverse = {"right of": "left of", "below": "above", "smaller than": "bigger than"}[kind]
    return holds(b, a, inverse, image_size)


def opposite(kind: str) -> str:
    return next(b if kind == a else a for a, b in AXES.values() if kind in (a, b))


def direction(a: Obj, b: Obj, axis: str, image_size: int) -> str | None:
    """The relation word along `axis` that is true of (a, b), if either is."""
    return next((kind for kind in AXES[axis] if holds(a, b, kind, image_size)), None)


def valid(scene: Scene, image_size: int) -> bool:
    """Every cell inside the image and clear of the others."""
    inside = all(MARGIN <= min(o.x0, o.y0) and max(o.x0, o.y0) + o.d <= image_size - MARGIN for o in scene)
    return inside and all(_apart(a, b, gap(image_size)) for a, b in combinations(scene, 2))


def _apart(a: Obj, b: Obj, g: int) -> bool:
    return (a.x0 + a.d + g <= b.x0 or b.x0 + b.d + g <= a.x0
            or a.y0 + a.d + g <= b.y0 or b.y0 + b.d + g <= a.y0)


def cell_side(size: str, image_size: int, rng: np.random.Generator | None = None) -> int:
    """Pixels of a cell of `size`; jittered when given a generator, nominal otherwise."""
    jitter = rng.uniform(-JITTER, JITTER) if rng is not None else 0.0
    return round((SCALE[size] + jitter) * image_size)


@dataclass(frozen=True)
class Pools:
    """The looks a scene may draw from: `seen` in train and test_id, `unseen` only in test_ood."""
    held_out: tuple[tuple[str, str], ...]  # (colour, shape), in config order
    seen: tuple[Look, ...]
    unseen: tuple[Look, ...]

    def is_seen(self, look: Look) -> bool:
        return (look[1], look[3]) not in self.held_out


def make_pools(config: WorldConfig) -> Pools:
    held = held_out_combos(config)
    looks = list(product(*(config.values(f) for f in FIELDS)))
    return Pools(held, tuple(lk for lk in looks if (lk[1], lk[3]) not in held),
                 tuple(lk for lk in looks if (lk[1], lk[3]) in held))


def held_out_combos(config: WorldConfig) -> tuple[tuple[str, str], ...]:
    """Random colour-shape combinations, never all of one colour's or one shape's: a random
    diagonal through the colour x shape grid stays seen, so OOD tests new pairings of seen words."""
    rng = np.random.default_rng([config.seed, 0])
    colours = [config.colours[i] for i in rng.permutation(len(config.colours))]
    shapes = [config.shapes[i] for i in rng.permutation(len(config.shapes))]
    span = max(len(colours), len(shapes))
    kept = {(colours[i % len(colours)], shapes[i % len(shapes)]) for i in range(span)}
    rest = [c for c in product(config.colours, config.shapes) if c not in kept]
    picked = sorted(rng.choice(len(rest), size=config.n_held_out(), replace=False))
    return tuple(rest[i] for i in picked)


def sample_scene(rng: np.random.Generator, config: WorldConfig, pools: Pools, ood: bool, twins: bool = False,
                 hard_pair: bool = False) -> Scene:
    """Objects of distinct looks, but for one identical pair when `twins`, or one pair alike in all
    but shape and one attribute when `hard_pair` (what a hard swap needs; random looks seldom make
    one). An OOD scene's first object has a held-out combination. The pair and the OOD object come
    first, so placement never drops them."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    first = [pools.unseen[rng.integers(len(pools.unseen))]] if ood else []
    pool = [lk for lk in (pools.seen + pools.unseen if ood else pools.seen) if lk not in first]
    looks = first + [pool[i] for i in rng.choice(len(pool), size=n - len(first) - int(twins), replace=False)]
    if twins:
        looks.insert(1, looks[0])
    elif hard_pair:
        partners = [lk for lk in pool if lk not in looks and _differ_in_one(looks[0], lk, config.attributes)]
        if partners:
            looks[1] = partners[rng.integers(len(partners))]
    return place(rng, looks, config.image_size)


def _differ_in_one(a: Look, b: Look, attributes: tuple[str, ...]) -> bool:
    """Different shapes, and exactly one of the captioned `attributes` different."""
    shape = FIELDS.index("shape")
    return a[shape] != b[shape] and sum(a[FIELDS.index(f)] != b[FIELDS.index(f)] for f in attributes) == 1


def place(rng: np.random.Generator, looks: list[Look], image_size: int) -> Scene:
    """Rejection sampling: a few fresh attempts, then one object fewer (two always fit)."""
    while True:
        for _ in range(RESTARTS):
            scene: Scene = ()
            for look in looks:
                obj = drop_in(rng, look, scene, image_size)
                if obj is None:
                    break
                scene += (obj,)
            else:
                return scene
        looks = looks[:-1]


def drop_in(rng: np.random.Generator, look: Look, scene: Scene, image_size: int) -> Obj | None:
    """An object of `look` at the first of TRIES random positions clear of `scene`, if any."""
    d, g = cell_side(look[0], image_size, rng), gap(image_size)
    xy = rng.integers(MARGIN, image_size - MARGIN - d + 1, size=(TRIES, 2))
    clear = np.ones(TRIES, dtype=bool)
    for o in scene:
        x_overlap = (xy[:, 0] < o.x0 + o.d + g) & (o.x0 < xy[:, 0] + d + g)
        y_overlap = (xy[:, 1] < o.y0 + o.d + g) & (o.y0 < xy[:, 1] + d + g)
        clear &= ~(x_overlap & y_overlap)
    if not clear.any():
        return None
    x0, y0 = xy[int(np.argmax(clear))]
    return Obj(*look, x0=int(x0), y0=int(y0), d=d)
