"""Captions as meanings first, text second: a `Caption` lists the scene's objects (with counts) and
optionally one relation; `judge` decides it against a scene's ground truth; `text`, `segments`
and `region_boxes` write it out.

A caption is exhaustive: it is true only of scenes holding exactly the objects it lists, which is
what makes an added object (add_obj) or a changed count false."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from itertools import combinations, permutations

import numpy as np

from .config import WorldConfig
from .scene import AXES, FIELDS, Obj, Scene, direction, holds, opposite

Description = tuple[str | None, ...]  # a value per FIELDS; None where the words leave it open
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass(frozen=True)
class Mention:
    what: Description
    count: int


@dataclass(frozen=True)
class Relation:
    subject: Description
    kind: str  # a word of scene.AXES
    other: Description


@dataclass(frozen=True)
class Caption:
    mentions: tuple[Mention, ...]
    relation: Relation | None


@dataclass(frozen=True)
class Plan:
    """How to caption a scene: objects in mention order, and the relation's (subject, other, axis).
    A negative reuses or edits its item's plan, so both captions read alike."""
    order: tuple[int, ...]
    pair: tuple[int, int, str] | None = None


def describe(obj: Obj, said: Iterable[str]) -> Description:
    return tuple(v if f == "shape" or f in said else None for f, v in zip(FIELDS, obj.look))


def matches(obj: Obj, what: Description) -> bool:
    return all(w is None or w == v for w, v in zip(what, obj.look))


def plan(rng: np.random.Generator, scene: Scene, config: WorldConfig) -> Plan:
    """A random mention order (independent of position) and a random true, unambiguous relation."""
    order = tuple(int(i) for i in rng.permutation(len(scene)))
    if not config.relations:
        return Plan(order)
    named = [reference(scene, k, config.attributes) is not None for k in range(len(scene))]
    options = [(i, j, axis) for i, j in permutations(range(len(scene)), 2) if named[i] and named[j]
               for axis in AXES if direction(scene[i], scene[j], axis, config.image_size)]
    return Plan(order, options[rng.integers(len(options))] if options else None)


def reference(scene: Scene, k: int, said: tuple[str, ...]) -> Description | None:
    """The shortest description that picks out object k alone, naming its colour when colours vary."""
    for subset in _reference_choices(said):
        what = describe(scene[k], subset)
        if sum(matches(o, what) for o in scene) == 1:
            return what
    return None


@cache
def _reference_choices(said: tuple[str, ...]) -> list[tuple[str, ...]]:
    subsets = [s for n in range(len(said) + 1) for s in combinations(said, n)]
    return sorted(subsets, key=lambda s: ("colour" not in s, len(s)))


def caption_for(scene: Scene, p: Plan, config: WorldConfig) -> Caption | None:
    """The caption `p` yields for `scene`; None when its relation is false both ways or ambiguous."""
    counts: dict[Description, int] = {}
    for i in p.order:  # identical objects merge into one counted mention, at the first one's place
        what = describe(scene[i], config.attributes)
        counts[what] = counts.get(what, 0) + 1
    mentions = tuple(Mention(what, n) for what, n in counts.items())
    if p.pair is None:
        return Caption(mentions, None)
    i, j, axis = p.pair
    kind = direction(scene[i], scene[j], axis, config.image_size)
    subject, other = reference(scene, i, config.attributes), reference(scene, j, config.attributes)
    if kind is None or subject is None or other is None:
        return None
    return Caption(mentions, Relation(subject, kind, other))


def judge(caption: Caption, scene: Scene, image_size: int) -> bool | None:
    """Ground truth. True: each object fits exactly one mention, each mention exactly its count of
    objects, and the relation's references each pick out one object for which it holds. False:
    the listing or a reference does not fit, or the opposite relation holds. None: the relation is
    too close to call either way (neither a caption nor a negative may be that)."""
    if any(sum(matches(o, m.what) for m in caption.mentions) != 1 for o in scene):
        return False
    if any(sum(matches(o, m.what) for o in scene) != m.count for m in caption.mentions):
        return False
    if caption.relation is None:
        return True
    rel = caption.relation
    subjects = [o for o in scene if matches(o, rel.subject)]
    others = [o for o in scene if matches(o, rel.other)]
    if not len(subjects) == len(others) == 1:
        return False
    if holds(subjects[0], others[0], rel.kind, image_size):
        return True
    return False if holds(subjects[0], others[0], opposite(rel.kind), image_size) else None


def phrase(mention: Mention) -> str:
    """"a large red striped circle", "an orange square", "two small blue crosses"."""
    words = [w for w in mention.what if w is not None]
    if mention.count == 1:
        return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
    plural = words[-1] + ("es" if words[-1].endswith(("s", "x")) else "s")
    return " ".join([NUMBERS[mention.count], *words[:-1], plural])


def clause(rel: Relation) -> str:
    """"the red circle is left of the blue square"."""
    def name(what: Description) -> str:
        return " ".join(["the", *(w for w in what if w is not None)])
    return f"{name(rel.subject)} is {rel.kind} {name(rel.other)}"


def alt_text(rng: np.random.Generator, caption: Caption) -> Caption:
    """Web alt-text: true of the caption's scene if read non-exhaustively. A random non-empty subset of its
    mentions, in order, each keeping each attribute word with probability 1/2 (the shape always),
    and no relation. Mentions that end up alike merge into one counted mention."""
    n = len(caption.mentions)
    keep = sorted(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False))
    counts: dict[Description, int] = {}
    for k in keep:
        m = caption.mentions[k]
        what = tuple(w if w is None or f == "shape" or rng.random() < 0.5 else None
                     for f, w in zip(FIELDS, m.what))
        counts[what] = counts.get(what, 0) + m.count
    return Caption(tuple(Mention(what, c) for what, c in counts.items()), None)


def segments(caption: Caption) -> list[str]:
    """One text per mention, then the relation clause: the caption's parts, in its order."""
    return [phrase(m) for m in caption.mentions] + ([clause(caption.relation)] if caption.relation else [])


def text(caption: Caption) -> str:
    phrases = [phrase(m) for m in caption.mentions]
    listing = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
    return f"{listing}; {clause(caption.relation)}" if caption.relation else listing


def region_boxes(caption: Caption, scene: Scene) -> list[list[int]]:
    """Object boxes in mention order (a counted mention gives one per object), then the union box
    of the related pair; for a caption true of `scene`, box k is segment k's region unless a
    mention counts several objects."""
    boxes = [list(o.box) for m in caption.mentions for o in scene if matches(o, m.what)]
    if caption.relation is not None:
        pair = [o.box for o in scene if matches(o, caption.relation.subject) or matches(o, caption.relation.other)]
        x0s, y0s, x1s, y1s = zip(*pair)
        boxes.append([min(x0s), min(y0s), max(x1s), max(y1s)])
    return boxes
