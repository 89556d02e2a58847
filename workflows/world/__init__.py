"""A controlled, CLEVR-like 2D world: scenes of coloured, textured shapes with ground truth,
captions, and bidirectional hard negatives (swap, replace, add, count), written as JSONL + PNGs
for the `jsonl` and `bivlc` readers. Deterministic by seed; some colour-shape combinations are
held out of training for an out-of-domain test split."""

from .config import WorldConfig, WorldConfigError
from .generate import generate

__all__ = ["WorldConfig", "WorldConfigError", "generate"]
