"""The regions of an image that the diagnostic matches caption segments against (the dataset's
own boxes when it has them, else a multi-scale grid), and the free source of their embeddings:
the cached patch features inside each box, pooled from one encoder pass. `patches` are the stored
last-layer tokens, `values` the value-path features (MaskCLIP), both needing a space extracted with
--projected so they live in the joint space. (The costly source, crops, is in crops.py.)"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError

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


POOLED_SOURCES = {"patches": "image_patches", "values": "image_values"}


def pooled_regions(space: SpaceEmbeddings, dataset: DatasetTables, source: str) -> Regions:
    """Regions pooled from the cached patch features of every image of the dataset: no encoder pass."""
    if source not in POOLED_SOURCES or POOLED_SOURCES[source] not in space.layouts:
        raise VlcacheError(f"space {space.key} stores no {source!r} features to pool; extract with "
                           f"--tokens patches,values --projected")
    if not space.spec.projected and source == "patches":
        raise VlcacheError(f"pooled patch regions need tokens in the joint space: space {space.key} was "
                           "extracted without --projected")
    images = dataset.images.to_pylist()
    rows = space.rows("images", [im["hash"] for im in images])
    present = [(im, r) for im, r in zip(images, rows) if r >= 0]
    grid = int(round(space.spec.dims["patches"] ** 0.5))
    size = int(space.spec.preprocess["size"][0])
    by_hash = {}
    for start in range(0, len(present), 256):
        chunk = present[start:start + 256]
        tokens = space.read(POOLED_SOURCES[source], np.array([r for _, r in chunk])).astype(np.float32)
        for (image, _), patch_tokens in zip(chunk, tokens):
            boxes = to_input_frame(region_boxes(image["width"], image["height"], image["boxes"]),
                                   image["width"], image["height"], size)
            by_hash[image["hash"]] = normalise(patch_weights(boxes, grid, size) @ patch_tokens)
    return Regions(by_hash, passes_per_image=1.0, source=f"pooled {source}")


def to_input_frame(boxes: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """Boxes in the encoder's input frame: resized so the short side is `size`, then centre-cropped."""
    scale = size / min(width, height)
    offset = np.array([(width * scale - size) / 2, (height * scale - size) / 2] * 2, dtype=np.float32)
    return np.clip(boxes * scale - offset, 0, size)


def patch_weights(boxes: np.ndarray, grid: int, size: int) -> np.ndarray:
    """(R, grid*grid) weights: the share of each patch cell inside each box, rows summing to one.
    A box smaller than a cell still gets the cell it overlaps most."""
    edges = np.arange(grid + 1) * (size / grid)
    lo, hi = edges[:-1], edges[1:]
    overlap_x = np.clip(np.minimum(boxes[:, None, 2], hi) - np.maximum(boxes[:, None, 0], lo), 0, None)  # (R, g)
    overlap_y = np.clip(np.minimum(boxes[:, None, 3], hi) - np.maximum(boxes[:, None, 1], lo), 0, None)
    weights = (overlap_y[:, :, None] * overlap_x[:, None, :]).reshape(len(boxes), -1)  # row-major like patches
    empty = weights.sum(1) == 0
    if empty.any():  # a degenerate box: take the cell under its centre
        cx = np.clip(((boxes[empty, 0] + boxes[empty, 2]) / 2 // (size / grid)).astype(int), 0, grid - 1)
        cy = np.clip(((boxes[empty, 1] + boxes[empty, 3]) / 2 // (size / grid)).astype(int), 0, grid - 1)
        weights[np.flatnonzero(empty), cy * grid + cx] = 1
    return weights / weights.sum(1, keepdims=True)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
