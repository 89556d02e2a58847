"""Scoring: score(caption, image) = the mean over the caption's segments (an object with its
attributes, a relation) of the best cosine between the segment's text embedding and the image's
region embeddings, whatever source the regions came from."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cache_schemas import DatasetTables, SpaceEmbeddings, text_hash

from ..data import Examples
from ..evaluate import report_from_scores
from .regions import Regions, normalise


def segment_embeddings(space: SpaceEmbeddings, dataset: DatasetTables) -> dict[str, np.ndarray]:
    """Per caption hash: its segments' global text embeddings (S, E), or the caption's own when the
    dataset gives it no segments."""
    captions = [(text["hash"], text["segments"] or [text["text"]]) for text in dataset.texts.to_pylist()]
    rows = space.rows("texts", [text_hash(s) for _, segments in captions for s in segments])
    found = rows[rows >= 0]
    embeddings = dict(zip(found.tolist(), normalise(space.read("text_global", found).astype(np.float32))))
    out, start = {}, 0
    for caption, segments in captions:  # one read for every segment: a read per caption is slow
        own = rows[start:start + len(segments)]
        start += len(segments)
        if (own >= 0).all():
            out[caption] = np.stack([embeddings[r] for r in own.tolist()])
    return out


def diagnose(space: SpaceEmbeddings, dataset: DatasetTables, regions: Regions,
             split: str | None = None, progress: bool = False) -> dict[str, Any]:
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
    negative_image = examples.negative_images[:, 0]
    pos, neg, bivlc = np.empty(n), np.empty(examples.negatives.shape), np.empty((n, 2, 2))
    for i in tqdm(range(n), desc=f"scoring ({regions.source})", unit="item", disable=not progress):
        pos[i] = score(examples.caption[i], examples.image[i])
        neg[i] = [score(t, examples.image[i]) for t in examples.negatives[i]]
        bivlc[i] = [[pos[i], score(examples.caption[i], negative_image[i])],
                    [neg[i, 0], score(examples.negatives[i, 0], negative_image[i])]]
    neg = np.where(np.isnan(neg), -np.inf, neg)
    bivlc[~np.isfinite(bivlc).all(axis=(1, 2))] = np.nan
    keep = ~np.isnan(pos)
    report = report_from_scores(examples, np.flatnonzero(keep), pos[keep], neg[keep], bivlc[keep])
    report.update({"dataset": dataset.name, "split": split, "space": space.key,
                   "head": f"diagnostic, {regions.source}", "encoder_passes_per_image": regions.passes_per_image})
    return report
