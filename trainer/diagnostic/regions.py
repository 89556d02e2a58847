"""The regions of an image that the structure-guided diagnostic matches caption segments against:
the dataset's own boxes when it has them, else a multi-scale grid. Shared by both region sources
(crops the encoder sees, patch features pooled from the store) so they score the same regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID = (1, 2, 3)  # the whole image, then 2x2 and 3x3 cells


@dataclass(frozen=True)
class Regions:
    """L2-normalised region embeddings per image hash, from one source, and what they cost in
    encoder passes per image (the extraction pass included)."""

    by_hash: dict[str, np.ndarray]  # hash -> (R, E)
    passes_per_image: float
    source: str


def region_boxes(width: int, height: int, boxes: list | None) -> np.ndarray:
    """(R, 4) pixel boxes (x0, y0, x1, y1) of an image."""
    if boxes:
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    grid = [(x / n * width, y / n * height, (x + 1) / n * width, (y + 1) / n * height)
            for n in GRID for y in range(n) for x in range(n)]
    return np.asarray(grid, dtype=np.float32)
