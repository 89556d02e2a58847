"""Hard negatives, bidirectional: each is an edited scene plus the caption it yields, kept only if
the edited caption is false of the original scene and the original caption false of the edited
one (checked with `judge`, never assumed). Candidates come in a random order, first good one wins.

Kinds (type_subtype): swap_att exchanges one attribute between two objects ("swap_att_hard" when
they differ only in shape and that attribute); replace_att gives an object a value no object has;
add_obj adds an object of a new look; swap_obj reverses the relation's arguments and replace_rel
its word (the edited image swaps the pair's places, or mirrors the scene); count changes how many
of a pair of identical objects there are."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

from .captions import Caption, Plan, caption_for, judge
from .config import MAX_OBJECTS, RELATION_KINDS, WorldConfig
from .scene import Obj, Pools, Scene, cell_side, drop_in, valid

LABELS = {"swap_att": ("swap", "att"), "swap_obj": ("swap", "obj"), "replace_att": ("replace", "att"),
          "replace_rel": ("replace", "rel"), "add_obj": ("add", "obj"), "count": ("count", "num")}
ADD_TRIES = 8  # new looks tried for add_obj before giving up on the kind


@dataclass(frozen=True)
class Negative:
    kind: str  # a key of LABELS
    subset: str  # the kind, or swap_att_hard
    scene: Scene
    caption: Caption


@dataclass(frozen=True)
class Context:
    """What every candidate generator needs about the item."""
    rng: np.random.Generator
    scene: Scene
    plan: Plan
    config: WorldConfig
    pools: Pools
    ood: bool


Candidate = tuple[str, Scene, Plan]  # (subset, edited scene, its caption plan)


def find_negative(ctx: Context, caption: Caption, first_kind: str) -> Negative | None:
    """The first acceptable negative, trying kinds in the config's order from `first_kind`."""
    kinds = ctx.config.negatives
    start = kinds.index(first_kind)
    twins = len({o.look for o in ctx.scene}) < len(ctx.scene)
    for kind in kinds[start:] + kinds[:start]:
        if (kind == "count") != twins:  # twins are what count negatives are for, and only them
            continue
        for subset, scene, p in GENERATORS[kind](ctx):
            negative = caption_for(scene, p, ctx.config)
            if negative is not None and _acceptable(ctx, caption, scene, negative, kind):
                return Negative(kind, subset, scene, negative)
    return None


def _acceptable(ctx: Context, caption: Caption, scene: Scene, negative: Caption, kind: str) -> bool:
    """A valid scene of the split, where the negative is true and the caption clearly false, and
    vice versa; relation kinds keep the listing and change only the relation, the others change
    the listing (so swapping two objects that differ in nothing else is no swap_att)."""
    size = ctx.config.image_size
    return (valid(scene, size)
            and (ctx.ood or all(ctx.pools.is_seen(o.look) for o in scene))
            and (kind == "count" or len({o.look for o in scene}) == len(scene))
            and (set(negative.mentions) == set(caption.mentions)) == (kind in RELATION_KINDS)
            and judge(negative, scene, size) is True and judge(negative, ctx.scene, size) is False
            and judge(caption, scene, size) is False)


def _resized(obj: Obj, d: int) -> Obj:
    """`obj` in a cell of side d around the same centre."""
    return replace(obj, d=d, x0=obj.x0 + (obj.d - d) // 2, y0=obj.y0 + (obj.d - d) // 2)


def _swap_att(ctx: Context) -> Iterator[Candidate]:
    """Hard swaps (the pair differs only in shape and the swapped attribute) first: random looks
    seldom allow one, and they are the subset that tests binding alone."""
    scene, said = ctx.scene, ctx.config.attributes
    options = [(i, j, a, all(getattr(scene[i], f) == getattr(scene[j], f) for f in said if f != a))
               for i, j in combinations(range(len(scene)), 2) for a in said
               if getattr(scene[i], a) != getattr(scene[j], a)]
    for n in sorted(ctx.rng.permutation(len(options)), key=lambda n: not options[n][3]):
        i, j, a, hard = options[n]
        a_i, a_j = replace(scene[i], **{a: getattr(scene[j], a)}), replace(scene[j], **{a: getattr(scene[i], a)})
        if a == "size":  # the cells trade sides too
            a_i, a_j = _resized(a_i, scene[j].d), _resized(a_j, scene[i].d)
        edited = tuple(a_i if k == i else a_j if k == j else o for k, o in enumerate(scene))
        yield ("swap_att_hard" if hard else "swap_att"), edited, ctx.plan


def _replace_att(ctx: Context) -> Iterator[Candidate]:
    scene, config = ctx.scene, ctx.config
    options = [(k, a, v) for a in config.attributes for v in config.values(a)
               if v not in {getattr(o, a) for o in scene} for k in range(len(scene))]
    for n in ctx.rng.permutation(len(options)):
        k, a, v = options[n]
        obj = replace(scene[k], **{a: v})
        if a == "size":
            obj = _resized(obj, cell_side(v, config.image_size))
        yield "replace_att", scene[:k] + (obj,) + scene[k + 1:], ctx.plan


def _add_obj(ctx: Context) -> Iterator[Candidate]:
    scene, n = ctx.scene, len(ctx.scene)
    if n >= MAX_OBJECTS:
        return
    present = {o.look for o in scene}
    options = [lk for lk in ctx.pools.seen + (ctx.pools.unseen if ctx.ood else ()) if lk not in present]
    for k in ctx.rng.permutation(len(options))[:ADD_TRIES]:
        obj = drop_in(ctx.rng, options[k], scene, ctx.config.image_size)
        if obj is not None:
            yield "add_obj", scene + (obj,), _inserted(ctx.rng, ctx.plan, n)


def _flipped(ctx: Context) -> list[Scene]:
    """Scenes where the related pair's spatial relation is reversed: the pair trades places
    (centre for centre), or, when that does not fit, the whole scene is mirrored."""
    if ctx.plan.pair is None or ctx.plan.pair[2] == "size":  # sizes are fixed by the listed attributes
        return []
    i, j, axis = ctx.plan.pair
    scene, size = ctx.scene, ctx.config.image_size
    a, b = scene[i], scene[j]
    moved = {i: replace(a, x0=(2 * b.x0 + b.d - a.d) // 2, y0=(2 * b.y0 + b.d - a.d) // 2),
             j: replace(b, x0=(2 * a.x0 + a.d - b.d) // 2, y0=(2 * a.y0 + a.d - b.d) // 2)}
    swapped = tuple(moved.get(k, o) for k, o in enumerate(scene))
    if axis == "horizontal":
        return [swapped, tuple(replace(o, x0=size - o.x0 - o.d) for o in scene)]
    return [swapped, tuple(replace(o, y0=size - o.y0 - o.d) for o in scene)]


def _swap_obj(ctx: Context) -> Iterator[Candidate]:
    for scene in _flipped(ctx):  # _flipped is empty without a pair
        i, j, axis = ctx.plan.pair
        yield "swap_obj", scene, Plan(ctx.plan.order, (j, i, axis))


def _replace_rel(ctx: Context) -> Iterator[Candidate]:
    for scene in _flipped(ctx):  # same plan: caption_for now finds the opposite word true
        yield "replace_rel", scene, ctx.plan


def _count(ctx: Context) -> Iterator[Candidate]:
    """One twin fewer, or one more; the relation (never about a twin) follows the indices."""
    scene, n = ctx.scene, len(ctx.scene)
    looks = [o.look for o in scene]
    twin = next(k for k, lk in enumerate(looks) if looks.count(lk) > 1)
    for grow in ctx.rng.permutation(2):
        if not grow:
            yield "count", scene[:twin] + scene[twin + 1:], _removed(ctx.plan, twin)
        elif n < MAX_OBJECTS:
            obj = drop_in(ctx.rng, looks[twin], scene, ctx.config.image_size)
            if obj is not None:
                yield "count", scene + (obj,), _inserted(ctx.rng, ctx.plan, n)


def _inserted(rng: np.random.Generator, p: Plan, new: int) -> Plan:
    """`p` with object `new` mentioned at a random place."""
    at = int(rng.integers(len(p.order) + 1))
    return Plan(p.order[:at] + (new,) + p.order[at:], p.pair)


def _removed(p: Plan, gone: int) -> Plan:
    """`p` for the scene without object `gone`, whose later objects move down one index."""
    def shift(k: int) -> int:
        return k - (k > gone)
    pair = None if p.pair is None else (shift(p.pair[0]), shift(p.pair[1]), p.pair[2])
    return Plan(tuple(shift(k) for k in p.order if k != gone), pair)


GENERATORS: dict[str, Callable[[Context], Iterator[Candidate]]] = {
    "swap_att": _swap_att, "swap_obj": _swap_obj, "replace_att": _replace_att,
    "replace_rel": _replace_rel, "add_obj": _add_obj, "count": _count,
}
