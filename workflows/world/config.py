"""Every knob of the scene world, validated once; the generator trusts a `WorldConfig` it is given."""

from __future__ import annotations

from dataclasses import dataclass, fields

from cache_schemas import VlcacheError

# Named colours far apart in RGB, so no two are confused.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 20),
    "purple": (130, 50, 170), "orange": (245, 130, 20), "cyan": (30, 190, 200), "pink": (240, 120, 180),
    "brown": (125, 75, 35), "black": (30, 30, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
TEXTURES = ("solid", "striped", "dotted", "checkered")
SIZES = ("small", "large")
ATTRIBUTES = ("colour", "size", "texture")  # shape always varies
# A negative kind is "<type>_<subtype>" except count; see negatives.py.
NEGATIVE_KINDS = ("swap_att", "swap_obj", "replace_att", "replace_rel", "add_obj", "count")
RELATION_KINDS = ("swap_obj", "replace_rel")
MIN_OBJECTS, MAX_OBJECTS = 2, 5  # MAX_OBJECTS also bounds negative scenes, which may add one
# The value an attribute takes when the world does not vary it (never written in a caption);
# an unvaried colour is the first configured one.
FIXED = {"size": "medium", "texture": "solid"}


class WorldConfigError(VlcacheError, ValueError):
    """A WorldConfig that cannot describe a world."""


@dataclass(frozen=True)
class WorldConfig:
    n_train: int = 4000
    n_test: int = 500  # per test split (test_id, test_ood)
    seed: int = 0
    image_size: int = 96
    min_objects: int = 2
    max_objects: int = 3
    colours: tuple[str, ...] = tuple(PALETTE)[:8]
    shapes: tuple[str, ...] = SHAPES[:6]
    textures: tuple[str, ...] = ("solid", "striped")
    attributes: tuple[str, ...] = ATTRIBUTES
    relations: bool = True
    holdout: float = 0.25  # fraction of colour-shape combinations kept out of train and test_id
    negatives: tuple[str, ...] = NEGATIVE_KINDS
    # Share of swap_att items whose scene is built for a hard swap (two objects alike in all but shape
    # and the swapped attribute: binding alone). Random scenes make few, too few to measure.
    hard_swaps: float = 0.5
    # Also write each row an "alt_text": web alt-text style, naming only some objects and only some
    # of their attributes, with no relation; for pretraining a CLIP on looser text than the captions.
    alt_text: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (from world.json) become tuples, so the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        problems = _problems(self)
        if problems:
            raise WorldConfigError(f"invalid WorldConfig: {problems[0]}")

    def values(self, attribute: str) -> tuple[str, ...]:
        """The values objects take for `attribute`: its vocabulary if varied, else one fixed value."""
        vocab = {"colour": self.colours, "size": SIZES, "texture": self.textures, "shape": self.shapes}[attribute]
        if attribute == "shape" or attribute in self.attributes:
            return vocab
        return (self.colours[0],) if attribute == "colour" else (FIXED[attribute],)

    def n_held_out(self) -> int:
        combos = len(self.colours) * len(self.shapes)
        return 0 if self.holdout == 0 else max(1, round(self.holdout * combos))

    def splits(self) -> dict[str, int]:
        """Scenes per split; no OOD split without held-out combinations."""
        sizes = {"train": self.n_train, "test_id": self.n_test, "test_ood": self.n_test}
        return sizes if self.holdout > 0 else {k: v for k, v in sizes.items() if k != "test_ood"}


def _problems(c: WorldConfig) -> list[str]:
    """Every rule the config breaks, first one first; each names the fix."""
    ints = ("n_train", "n_test", "seed", "image_size", "min_objects", "max_objects")
    wrong_type = [n for n in ints if not isinstance(getattr(c, n), int) or isinstance(getattr(c, n), bool)]
    if wrong_type:
        return [f"{', '.join(wrong_type)}: expected integers"]
    checks = [
        (c.seed >= 0, f"seed must be >= 0, got {c.seed}"),
        (c.n_train >= 1 and c.n_test >= 1, f"n_train and n_test must be >= 1, got {c.n_train} and {c.n_test}"),
        (64 <= c.image_size <= 160, f"image_size must be in 64..160, got {c.image_size}"),
        (MIN_OBJECTS <= c.min_objects <= c.max_objects <= MAX_OBJECTS,
         f"need {MIN_OBJECTS} <= min_objects <= max_objects <= {MAX_OBJECTS}, got {c.min_objects}..{c.max_objects}"),
        *_vocab_checks("colours", c.colours, tuple(PALETTE)),
        *_vocab_checks("shapes", c.shapes, SHAPES),
        *_vocab_checks("textures", c.textures, TEXTURES, minimum=1),
        *_vocab_checks("attributes", c.attributes, ATTRIBUTES, minimum=0),
        *_vocab_checks("negatives", c.negatives, NEGATIVE_KINDS, minimum=1),
        (isinstance(c.relations, bool), f"relations must be True or False, got {c.relations!r}"),
        (isinstance(c.alt_text, bool), f"alt_text must be True or False, got {c.alt_text!r}"),
        (isinstance(c.hard_swaps, (int, float)) and 0 <= c.hard_swaps <= 1,
         f"hard_swaps must be in [0, 1], got {c.hard_swaps!r}"),
        (isinstance(c.holdout, (int, float)) and 0 <= c.holdout <= 0.5,
         f"holdout must be in [0, 0.5], got {c.holdout!r}"),
    ]
    problems = [message for ok, message in checks if not ok]
    return problems or _consistency(c)


def _vocab_checks(name: str, chosen: object, known: tuple[str, ...], minimum: int = 2) -> list[tuple[bool, str]]:
    if not isinstance(chosen, tuple) or not all(isinstance(v, str) for v in chosen):
        return [(False, f"{name} must be a list of names from {list(known)}")]
    unknown = [v for v in chosen if v not in known]
    return [
        (not unknown, f"unknown {name} {unknown}; choose from {list(known)}"),
        (len(set(chosen)) == len(chosen), f"{name} has duplicates: {list(chosen)}"),
        (len(chosen) >= minimum, f"{name} needs at least {minimum} name(s), got {list(chosen)}"),
    ]


def _consistency(c: WorldConfig) -> list[str]:
    """Rules between fields, checked once each field is valid on its own."""
    needs_relations = [k for k in c.negatives if k in RELATION_KINDS]
    needs_attributes = [k for k in c.negatives if k.endswith("_att")]
    seen_combos = len(c.values("colour")) * len(c.shapes) - c.n_held_out()
    seen_looks = seen_combos * len(c.values("size")) * len(c.values("texture"))
    checks = [
        (c.relations or not needs_relations,
         f"negatives {needs_relations} need relations=True (or leave them out of negatives)"),
        (c.attributes or not needs_attributes, f"negatives {needs_attributes} need at least one attribute"),
        (c.holdout == 0 or "colour" in c.attributes, "holdout > 0 needs 'colour' in attributes (set holdout=0)"),
        (seen_looks > c.max_objects,
         f"only {seen_looks} distinct objects for scenes of up to {c.max_objects}; add colours, shapes or attributes"),
    ]
    return [message for ok, message in checks if not ok]
