"""The research's diagnostic, structure-guided inference: score(caption, image) = the mean over the
caption's segments (an object with its attributes, a relation) of the best cosine between the
segment's text embedding and the image's region embeddings.

Regions pooled here come from one cached encoder pass: the patch features inside each box
(ground-truth boxes when the dataset has them, else a multi-scale grid), averaged by overlap.
`patches` are the stored last-layer tokens, `values` the value-path features (MaskCLIP), both
needing a space extracted with --projected so they live in the joint space. Regions from crops that
the image tower encodes separately come from `pipeline.regions` and are scored the same way."""

from __future__ import annotations

from typing import Any

import numpy as np

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError, text_hash
from cache_schemas.regions import Regions, region_boxes

from .data import Examples
from .evaluate import report_from_scores

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
            by_hash[image["hash"]] = _normalise(patch_weights(boxes, grid, size) @ patch_tokens)
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


def segment_embeddings(space: SpaceEmbeddings, dataset: DatasetTables) -> dict[str, np.ndarray]:
    """Per caption hash: its segments' global text embeddings (S, E), or the caption's own when the
    dataset gives it no segments."""
    out = {}
    for text in dataset.texts.to_pylist():
        segments = text["segments"] or [text["text"]]
        rows = space.rows("texts", [text_hash(s) for s in segments])
        if (rows >= 0).all():
            out[text["hash"]] = _normalise(space.read("text_global", rows).astype(np.float32))
    return out


def diagnose(space: SpaceEmbeddings, dataset: DatasetTables, regions: Regions,
             split: str | None = None) -> dict[str, Any]:
    """Evaluate structure-guided inference with the given regions, as a head's report."""
    examples = Examples.from_dataset(space, dataset, split)
    segments = segment_embeddings(space, dataset)
    images, texts = space.images(), space.texts()
    hash_of_image = dict(zip(images["row"].to_pylist(), images["hash"].to_pylist()))
    hash_of_text = dict(zip(texts["row"].to_pylist(), texts["hash"].to_pylist()))

    def score(text_row: int, image_row: int) -> float:
        if text_row < 0 or image_row < 0:
            return np.nan
        s, r = segments.get(hash_of_text[text_row]), regions.by_hash.get(hash_of_image[image_row])
        return float((s @ r.T).max(axis=1).mean()) if s is not None and r is not None else np.nan

    n = len(examples)
    pos = np.array([score(examples.caption[i], examples.image[i]) for i in range(n)])
    neg = np.array([[score(t, examples.image[i]) for t in examples.negatives[i]] for i in range(n)])
    neg = np.where(np.isnan(neg), -np.inf, neg)
    negative_image = examples.negative_images[:, 0]
    bivlc = np.array([[[pos[i], score(examples.caption[i], negative_image[i])],
                       [neg[i, 0], score(examples.negatives[i, 0], negative_image[i])]] for i in range(n)])
    bivlc[~np.isfinite(bivlc).all(axis=(1, 2))] = np.nan
    keep = ~np.isnan(pos)
    report = report_from_scores(examples, np.flatnonzero(keep), pos[keep], neg[keep], bivlc[keep])
    report.update({"dataset": dataset.name, "split": split, "space": space.key,
                   "head": f"diagnostic, {regions.source}", "encoder_passes_per_image": regions.passes_per_image})
    return report


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
