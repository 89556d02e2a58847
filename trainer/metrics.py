"""Metrics for vision-language alignment heads on compositional benchmarks and retrieval.

Every function takes numpy arrays of scores where higher means a better image-text match and is
pure (no I/O, no globals). Ties never help: a tie between a correct and a wrong candidate counts
as a loss, so a constant (collapsed) head scores zero on accuracy and chance-or-worse on ranking.

- SugarCrepe-style accuracy: `caption_correct`, `caption_accuracy`.
- BiVLC-style I2T / T2I / group: `bivlc_correct`.
- Per-subset means for reports: `grouped_mean` (item-level, "micro") and `macro_mean` (mean over
  subsets, which is how SugarCrepe's "average" is reported).
- Retrieval recall@K in both directions: `recall_at_k`.
- Re-ranking the global top K with a pairwise head: `two_stage`.
- `markdown_table` for reports.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cache_schemas import VlcacheError

DEFAULT_KS = (1, 5, 10)
_CHUNK_ELEMENTS = 1 << 22  # rows per chunk keep the (rows, n_candidates) temporaries near 4M elements


class MetricInputError(VlcacheError, ValueError):
    """Scores, labels or options with the wrong shape or values."""


# --- validation ---------------------------------------------------------------------------------


def _scores(x: ArrayLike, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    """A numeric array of one of the allowed ranks with no NaN (a NaN score is a bug upstream,
    and comparisons with NaN would silently count as losses)."""
    a = np.asarray(x)
    if a.ndim not in ndims:
        raise MetricInputError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise MetricInputError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)  # negating unsigned ints would wrap around
    if np.isnan(a).any():
        raise MetricInputError(f"{name} contains NaN")
    return a


def _values(x: ArrayLike, name: str) -> np.ndarray:
    """A non-empty 1-D per-item array of booleans or numbers, as float64."""
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise MetricInputError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise MetricInputError(f"{name} must hold booleans or numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise MetricInputError(f"{name} contains NaN")
    return a


def _text_to_image(x: ArrayLike, n_images: int, n_texts: int) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n_texts,):
        raise MetricInputError(f"text_to_image must have shape ({n_texts},) (one image per text), got {a.shape}")
    if n_texts and not np.issubdtype(a.dtype, np.integer):
        raise MetricInputError(f"text_to_image must hold integer image indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if n_texts and (a.min() < 0 or a.max() >= n_images):
        raise MetricInputError(f"text_to_image values must lie in [0, {n_images}), got [{a.min()}, {a.max()}]")
    return a


def _ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, numbers.Integral) or k < 1 for k in ks):
        raise MetricInputError(f"ks must be positive integers, got {ks}")
    return tuple(int(k) for k in ks)


def _score_matrix(S: ArrayLike, text_to_image: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    S = _scores(S, "S", (2,))
    if 0 in S.shape:
        raise MetricInputError(f"S must have at least one image and one text, got shape {S.shape}")
    return S, _text_to_image(text_to_image, *S.shape)


# --- SugarCrepe and BiVLC -----------------------------------------------------------------------


def caption_correct(pos_scores: ArrayLike, neg_scores: ArrayLike) -> np.ndarray:
    """Per-item SugarCrepe outcome: the positive caption scores strictly above every negative.

    pos_scores: (N,) score of each image with its caption.
    neg_scores: (N,) or (N, K) score of each image with its K negative captions.
    Returns (N,) bool. A tie with any negative counts as wrong.
    """
    pos = _scores(pos_scores, "pos_scores", (1,))
    neg = _scores(neg_scores, "neg_scores", (1, 2))
    neg = neg[:, None] if neg.ndim == 1 else neg  # (N, K)
    if neg.shape[0] != pos.shape[0] or neg.shape[1] == 0:
        raise MetricInputError(f"neg_scores must have shape ({len(pos)},) or ({len(pos)}, K>0), got {neg.shape}")
    return (pos[:, None] > neg).all(axis=1)


def caption_accuracy(pos_scores: ArrayLike, neg_scores: ArrayLike) -> float:
    """Fraction of items whose positive caption beats every negative (ties count as wrong);
    shapes as in `caption_correct`."""
    return float(_values(caption_correct(pos_scores, neg_scores), "pos_scores").mean())


@dataclass(frozen=True)
class BivlcCorrect:
    """Per-item BiVLC outcomes, each (N,) bool."""

    i2t: np.ndarray
    t2i: np.ndarray
    group: np.ndarray

    def mean(self) -> dict[str, float]:
        """{"i2t": ..., "t2i": ..., "group": ...} as fractions."""
        return {name: float(getattr(self, name).mean()) for name in ("i2t", "t2i", "group")}


def bivlc_correct(s: ArrayLike) -> BivlcCorrect:
    """BiVLC outcomes from s (N, 2, 2) where s[n, c, i] scores caption c with image i; c=0 is the
    positive caption, c=1 the negative one; i=0 the positive image, i=1 the negative one.

    I2T: each image prefers its own caption: s[0,0] > s[1,0] and s[1,1] > s[0,1].
    T2I: each caption prefers its own image: s[0,0] > s[0,1] and s[1,1] > s[1,0].
    group: both. Comparisons are strict, so ties count as wrong.
    """
    s = _scores(s, "s", (3,))
    if s.shape[1:] != (2, 2) or s.shape[0] == 0:
        raise MetricInputError(f"s must have shape (N>0, 2, 2) indexed [item, caption, image], got {s.shape}")
    c0i0, c0i1, c1i0, c1i1 = s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 1, 1]
    i2t = (c0i0 > c1i0) & (c1i1 > c0i1)
    t2i = (c0i0 > c0i1) & (c1i1 > c1i0)
    return BivlcCorrect(i2t=i2t, t2i=t2i, group=i2t & t2i)


# --- grouping -----------------------------------------------------------------------------------


def _key_name(key: Hashable) -> str:
    """JSON-friendly group name: tuples such as (type, subtype) become "type/subtype"."""
    if isinstance(key, (tuple, list, np.ndarray)):
        return "/".join(str(part) for part in key)
    return str(key)


def _group_means(values: ArrayLike, keys: Sequence[Hashable]) -> tuple[np.ndarray, dict[str, float]]:
    v = _values(values, "values")
    names = [_key_name(k) for k in keys]
    if len(names) != len(v):
        raise MetricInputError(f"keys must have one entry per value ({len(v)}), got {len(names)}")
    uniq, inverse = np.unique(np.array(names, dtype=object), return_inverse=True)
    means = np.bincount(inverse, weights=v) / np.bincount(inverse)  # every group has >= 1 item
    return v, {str(name): float(m) for name, m in zip(uniq, means)}


def grouped_mean(values: ArrayLike, keys: Sequence[Hashable], *, overall: str = "all") -> dict[str, float]:
    """Mean of a per-item array within each group, plus the item-level mean under `overall`.

    values: (N,) bool or float, e.g. `caption_correct(...)` or `bivlc_correct(...).group`.
    keys: N hashable group keys, e.g. subset names, or (type, subtype) tuples, which become
        "type/subtype".
    Returns {group: mean, ..., overall: mean over all items}, groups sorted by name; plain
    floats and str keys, ready for json.dumps.
    """
    v, means = _group_means(values, keys)
    if overall in means:
        raise MetricInputError(f"a group is named {overall!r}; pass another overall= name")
    return {**means, overall: float(v.mean())}


def macro_mean(values: ArrayLike, keys: Sequence[Hashable]) -> float:
    """Mean over groups of the per-group means (each group weighs the same, whatever its size);
    SugarCrepe's "average" is this over its 7 subsets. Shapes as in `grouped_mean`."""
    _, means = _group_means(values, keys)
    return float(np.mean(list(means.values())))


# --- retrieval ----------------------------------------------------------------------------------


def _row_chunks(n_rows: int, n_cols: int) -> Iterable[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    return (slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step))


def _relevant_rank(s: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(q, C) scores and relevance -> (q,) 0-based rank of each row's best relevant candidate when
    ties put relevant candidates last; every row needs a relevant candidate."""
    best = np.where(relevant, s, -np.inf).max(axis=1)  # (q,)
    # Rank = number of wrong candidates at least as good as the best right one (ties lose).
    return ((s >= best[:, None]) & ~relevant).sum(axis=1)


def _pessimistic_rank(scores: np.ndarray, rows: np.ndarray, row_labels: np.ndarray,
                      cand_labels: np.ndarray) -> np.ndarray:
    """`_relevant_rank` for each query row, in chunks to bound memory.

    scores: (n_rows_total, C); rows: (Q,) the query rows; row_labels: (Q,) each query's label;
    cand_labels: (C,); a candidate is relevant when its label equals the query's. Returns (Q,).
    """
    out = np.empty(len(rows), dtype=np.int64)
    for chunk in _row_chunks(len(rows), scores.shape[1]):
        relevant = cand_labels[None, :] == row_labels[chunk, None]  # (q, C)
        out[chunk] = _relevant_rank(scores[rows[chunk]], relevant)
    return out


def _recall(rank: np.ndarray, ks: tuple[int, ...], prefix: str) -> dict[str, float]:
    # rank < k is also right when k exceeds the number of candidates: recall is then 1.
    return {f"{prefix}_r{k}": float(np.mean(rank < k)) for k in ks}


def _images_with_texts(text_to_image: np.ndarray, n_images: int) -> np.ndarray:
    """Images that can be I2T queries; images without texts are only distractors for T2I."""
    return np.flatnonzero(np.bincount(text_to_image, minlength=n_images) > 0)


def recall_at_k(S: ArrayLike, text_to_image: ArrayLike, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Retrieval recall@K in both directions.

    S: (n_images, n_texts) scores. text_to_image: (n_texts,) int, the one image each text belongs
    to; an image may have several texts (COCO has 5) or none (then it is only a T2I distractor
    and not an I2T query).
    I2T recall@K: fraction of images (with texts) with at least one of their texts in the top K.
    T2I recall@K: fraction of texts whose image is in the top K.
    Ties are broken pessimistically: a right candidate ranks below every wrong one with an equal
    score. K larger than the number of candidates gives recall 1.
    Returns {"i2t_r1": ..., "i2t_r5": ..., ..., "t2i_r1": ..., ...} as fractions.
    """
    S, t2i_labels = _score_matrix(S, text_to_image)
    ks = _ks(ks)
    n_images, n_texts = S.shape
    queries = _images_with_texts(t2i_labels, n_images)
    i2t_rank = _pessimistic_rank(S, queries, queries, t2i_labels)
    t2i_rank = _pessimistic_rank(S.T, np.arange(n_texts), t2i_labels, np.arange(n_images))
    return {**_recall(i2t_rank, ks, "i2t"), **_recall(t2i_rank, ks, "t2i")}


# --- two-stage ranking --------------------------------------------------------------------------

Rescore = Callable[[np.ndarray, np.ndarray], ArrayLike]


@dataclass(frozen=True)
class Ranking:
    """One direction of a two-stage ranking.

    queries: (Q,) query indices (images for I2T, texts for T2I).
    top: (Q, k) candidate indices of the re-ranked top k, best first; the rest of each ranking is
        the global order of the remaining candidates.
    rank: (Q,) 0-based position of each query's best relevant candidate in the final ranking.
    pairs_scored: pairs the head scored for this direction (Q * k).
    """

    queries: np.ndarray
    top: np.ndarray
    rank: np.ndarray
    pairs_scored: int


@dataclass(frozen=True)
class TwoStageResult:
    i2t: Ranking
    t2i: Ranking

    @property
    def pairs_scored(self) -> int:
        """Head calls in pairs, both directions (vs n_images * n_texts for scoring everything)."""
        return self.i2t.pairs_scored + self.t2i.pairs_scored

    def recall(self, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
        """Recall@K of the final rankings, same keys as `recall_at_k`."""
        ks = _ks(ks)
        return {**_recall(self.i2t.rank, ks, "i2t"), **_recall(self.t2i.rank, ks, "t2i")}


def _top_k(s: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """(q, C) scores and relevance -> (q, k) indices of the k best candidates, best first; ties put
    relevant candidates last, then lower indices first."""
    n = s.shape[1]
    if k >= n:
        best = np.broadcast_to(np.arange(n), s.shape)
    else:
        best = np.argpartition(-s, k - 1, axis=1)[:, :k]
        # argpartition picks arbitrarily among candidates tied with the k-th score. Which ones get
        # in matters (a right one must not; the wrong ones differ in head scores), so rows where
        # not all of them fit get a full sort: ~3x slower than partitioning, so only there.
        kth = np.take_along_axis(s, best, axis=1).min(axis=1, keepdims=True)  # (q, 1)
        crowded = (s >= kth).sum(axis=1) > k                                  # (q,)
        if crowded.any():
            best[crowded] = np.lexsort((relevant[crowded], -s[crowded]), axis=-1)[:, :k]
    s_best, rel_best = np.take_along_axis(s, best, axis=1), np.take_along_axis(relevant, best, axis=1)
    return np.take_along_axis(best, np.lexsort((best, rel_best, -s_best), axis=-1), axis=1)


def _global_top(scores: np.ndarray, rows: np.ndarray, row_labels: np.ndarray, cand_labels: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k candidates per query by global score (ties: relevant last) and the rank of the best
    relevant candidate in that global order. Returns (Q, k), (Q,)."""
    top = np.empty((len(rows), k), dtype=np.int64)
    rank = np.empty(len(rows), dtype=np.int64)
    for chunk in _row_chunks(len(rows), scores.shape[1]):
        s = scores[rows[chunk]]                                      # (q, C)
        relevant = cand_labels[None, :] == row_labels[chunk, None]   # (q, C)
        top[chunk] = _top_k(s, relevant, k)
        rank[chunk] = _relevant_rank(s, relevant)
    return top, rank


def _score_pairs(score: Rescore, query: np.ndarray, cand: np.ndarray, batch_size: int) -> np.ndarray:
    """Call the head on (query, candidate) pairs in batches. Returns (P,) float64."""
    out = np.empty(len(query), dtype=np.float64)
    for start in range(0, len(query), batch_size):
        sl = slice(start, start + batch_size)
        got = np.asarray(score(query[sl], cand[sl]), dtype=np.float64)
        if got.shape != (len(query[sl]),):
            raise MetricInputError(f"rescore must return one score per pair, shape ({len(query[sl])},), "
                                   f"got {got.shape}")
        if np.isnan(got).any():
            raise MetricInputError("rescore returned NaN")
        out[sl] = got
    return out


def _rerank(scores: np.ndarray, rows: np.ndarray, row_labels: np.ndarray, cand_labels: np.ndarray,
            k: int, score: Rescore, batch_size: int) -> Ranking:
    k = min(k, scores.shape[1])
    top, global_rank = _global_top(scores, rows, row_labels, cand_labels, k)        # (Q, k), (Q,)
    head = _score_pairs(score, np.repeat(rows, k), top.ravel(), batch_size).reshape(top.shape)
    relevant = cand_labels[top] == row_labels[:, None]                                # (Q, k)
    position = np.broadcast_to(np.arange(k), top.shape)
    # Head score desc; ties put relevant candidates last, then keep the global order.
    order = np.lexsort((position, relevant, -head), axis=-1)
    top = np.take_along_axis(top, order, axis=1)
    relevant = np.take_along_axis(relevant, order, axis=1)
    # The head only reorders the top k, so a relevant candidate outside it keeps its global rank.
    rank = np.where(relevant.any(axis=1), relevant.argmax(axis=1), global_rank)
    return Ranking(queries=rows, top=top, rank=rank, pairs_scored=top.size)


def two_stage(G: ArrayLike, rescore: Rescore, text_to_image: ArrayLike, k: int, *,
              batch_size: int = 4096) -> TwoStageResult:
    """Re-rank each query's global top k with a pairwise head, in both directions.

    G: (n_images, n_texts) global scores (e.g. cosine similarities of cached embeddings).
    rescore: rescore(image_idx, text_idx) -> scores, with image_idx and text_idx (P,) int64
        arrays of paired indices and scores array-like (P,); called with P <= batch_size.
    text_to_image: (n_texts,) int, as in `recall_at_k`.
    k: candidates re-ranked per query, clipped to the number of candidates.
    The head re-orders only the top k; the other candidates follow in global order, so a relevant
    item outside the top k cannot be recovered. Ties never help: in the global order relevant
    candidates come last among equal scores (then lower index first), and among equal head scores
    relevant candidates come last (then global order). Queries are the images that have texts
    (I2T) and all texts (T2I); the head scores n_queries * k pairs per direction, instead of
    n_images * n_texts for scoring everything.
    """
    G, t2i_labels = _score_matrix(G, text_to_image)
    if not isinstance(k, numbers.Integral) or k < 1:
        raise MetricInputError(f"k must be a positive integer, got {k!r}")
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise MetricInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_images, n_texts = G.shape
    images = _images_with_texts(t2i_labels, n_images)
    i2t = _rerank(G, images, images, t2i_labels, int(k), rescore, int(batch_size))
    t2i = _rerank(G.T, np.arange(n_texts), t2i_labels, np.arange(n_images), int(k),
                  lambda texts, imgs: rescore(imgs, texts), int(batch_size))
    return TwoStageResult(i2t=i2t, t2i=t2i)


# --- reports ------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("|", "\\|")
    if isinstance(value, numbers.Real):
        return f"{100 * float(value):.1f}"
    raise MetricInputError(f"table values must be fractions, strings or None, got {value!r}")


def markdown_table(rows: Mapping[str, Mapping[str, object]], columns: Sequence[str] | None = None, *,
                   index_name: str = "method") -> str:
    """A Markdown table with one row per method: {method: {column: value}}.

    Numbers are fractions shown as percentages with one decimal (0.7312 -> "73.1"); strings are
    shown as given; missing values and None as "-". columns: order and selection of columns
    (default: every column, in order of first appearance).
    """
    if columns is None:
        columns = list(dict.fromkeys(col for values in rows.values() for col in values))
    header = [index_name, *columns]
    lines = [
        "| " + " | ".join(_cell(str(h)) for h in header) + " |",
        "|" + "|".join(["---", *["---:"] * len(columns)]) + "|",  # numbers right-aligned
    ]
    for method, values in rows.items():
        cells = [_cell(str(method)), *(_cell(values.get(col)) for col in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
