"""Metrics on hand-made score matrices with hand-computed answers, plus brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cache_schemas import VlcacheError
from trainer.metrics import (
    MetricInputError,
    bivlc_correct,
    caption_accuracy,
    caption_correct,
    grouped_mean,
    macro_mean,
    markdown_table,
    recall_at_k,
    two_stage,
)

# --- SugarCrepe ---------------------------------------------------------------------------------


def test_caption_accuracy_single_negative_tie_is_wrong():
    pos, neg = [3.0, 2.0, 1.0], [1.0, 2.0, 0.0]
    assert caption_correct(pos, neg).tolist() == [True, False, True]
    assert caption_accuracy(pos, neg) == pytest.approx(2 / 3)


def test_caption_accuracy_several_negatives_must_all_lose():
    pos = [5, 5, 5, 5]
    neg = [[1, 4], [1, 5], [6, 0], [4.9, -1]]
    assert caption_correct(pos, neg).tolist() == [True, False, False, True]
    assert caption_accuracy(pos, neg) == 0.5


def test_caption_accuracy_constant_scores_are_all_wrong():
    assert caption_accuracy(np.zeros(4), np.zeros((4, 3))) == 0.0


@pytest.mark.parametrize("pos, neg", [
    ([1.0, 2.0], [1.0]),                   # one negative missing
    ([1.0, 2.0], np.zeros((2, 0))),        # no negatives at all
    ([[1.0, 2.0]], [[1.0, 2.0]]),          # positives not 1-D
    ([1.0, np.nan], [0.0, 0.0]),           # NaN score
    ([], []),                              # nothing to average
])
def test_caption_accuracy_rejects_bad_input(pos, neg):
    with pytest.raises(MetricInputError):
        caption_accuracy(pos, neg)


def test_errors_are_value_errors_and_vlcache_errors():
    with pytest.raises(ValueError):
        caption_correct([1.0], [[1.0], [2.0]])
    assert issubclass(MetricInputError, VlcacheError)


# --- BiVLC --------------------------------------------------------------------------------------


def _bivlc_item(c0i0: float, c0i1: float, c1i0: float, c1i1: float) -> list[list[float]]:
    return [[c0i0, c0i1], [c1i0, c1i1]]  # s[caption][image]


BIVLC_CASES = {  # name: (item, i2t, t2i)
    "all correct": (_bivlc_item(1, 0, 0, 1), True, True),
    "C1 ties C0 on I0": (_bivlc_item(1, 0, 1, 2), False, True),     # only s(C0,I0)>s(C1,I0) fails
    "C0 ties C1 on I1": (_bivlc_item(2, 1, 0, 1), False, True),     # only s(C1,I1)>s(C0,I1) fails
    "C0 prefers I1": (_bivlc_item(1, 2, 0, 3), True, False),        # only s(C0,I0)>s(C0,I1) fails
    "C1 prefers I0": (_bivlc_item(3, 0, 2, 1), True, False),        # only s(C1,I1)>s(C1,I0) fails
    "all swapped": (_bivlc_item(0, 1, 1, 0), False, False),
}


@pytest.mark.parametrize("name", BIVLC_CASES)
def test_bivlc_each_condition(name):
    item, i2t, t2i = BIVLC_CASES[name]
    got = bivlc_correct([item])
    assert (got.i2t[0], got.t2i[0], got.group[0]) == (i2t, t2i, i2t and t2i)


def test_bivlc_means():
    got = bivlc_correct([item for item, _, _ in BIVLC_CASES.values()])
    assert got.i2t.tolist() == [True, False, False, True, True, False]
    assert got.t2i.tolist() == [True, True, True, False, False, False]
    assert got.mean() == pytest.approx({"i2t": 0.5, "t2i": 0.5, "group": 1 / 6})


@pytest.mark.parametrize("shape", [(3, 2), (3, 2, 3), (0, 2, 2)])
def test_bivlc_rejects_bad_shapes(shape):
    with pytest.raises(MetricInputError):
        bivlc_correct(np.zeros(shape))


# --- grouping -----------------------------------------------------------------------------------


def test_grouped_mean_and_macro_mean():
    values = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    keys = ["a", "a", "a", "a", "b", "b"]
    assert grouped_mean(values, keys) == {"a": 0.75, "b": 0.0, "all": 0.5}
    assert macro_mean(values, keys) == 0.375  # each group weighs the same, unlike the item mean


def test_grouped_mean_tuple_keys_are_json_ready():
    values = [1.0, 0.0, 1.0]
    keys = [("swap", "att"), ("swap", "att"), ("add", "obj")]
    got = grouped_mean(values, keys, overall="overall")
    assert got == pytest.approx({"add/obj": 1.0, "swap/att": 0.5, "overall": 2 / 3})
    assert list(got) == ["add/obj", "swap/att", "overall"]
    assert json.loads(json.dumps(got)) == got


def test_grouped_mean_numpy_keys():
    assert grouped_mean([1, 0, 1], np.array(["x", "y", "x"])) == {"x": 1.0, "y": 0.0, "all": 2 / 3}


def test_grouped_mean_rejects_bad_input():
    with pytest.raises(MetricInputError, match="overall"):
        grouped_mean([1, 0], ["all", "b"])
    with pytest.raises(MetricInputError):
        grouped_mean([1, 0], ["a"])
    with pytest.raises(MetricInputError):
        macro_mean([], [])


# --- recall@K -----------------------------------------------------------------------------------

# 3 images, 5 texts; texts 0-1 belong to image 0, text 2 to image 1, texts 3-4 to image 2.
TEXT_TO_IMAGE = np.array([0, 0, 1, 2, 2])
S = np.array([
    # t0   t1   t2   t3   t4
    [0.9, 0.1, 0.5, 0.4, 0.3],   # image 0: its best text t0 is first -> rank 0
    [0.8, 0.7, 0.6, 0.1, 0.2],   # image 1: t2 has t0, t1 above -> rank 2
    [0.4, 0.4, 0.9, 0.4, 0.1],   # image 2: best own 0.4 ties t0, t1 and loses to t2 -> rank 3
])
# T2I ranks by column: t0 0; t1 2; t2 1; t3 1 (ties image 0); t4 2.


def test_recall_at_k_hand_computed():
    got = recall_at_k(S, TEXT_TO_IMAGE, ks=(1, 2, 3, 4, 10))
    assert got == pytest.approx({
        "i2t_r1": 1 / 3, "i2t_r2": 1 / 3, "i2t_r3": 2 / 3, "i2t_r4": 1.0, "i2t_r10": 1.0,
        "t2i_r1": 1 / 5, "t2i_r2": 3 / 5, "t2i_r3": 1.0, "t2i_r4": 1.0, "t2i_r10": 1.0,
    })


def test_recall_default_ks_and_k_beyond_candidates():
    assert list(recall_at_k(S, TEXT_TO_IMAGE)) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    # Only 3 images to rank: every text's image is within the top 5.
    assert recall_at_k(S, TEXT_TO_IMAGE)["t2i_r5"] == 1.0


def test_recall_ties_do_not_help():
    got = recall_at_k(np.zeros((3, 5)), TEXT_TO_IMAGE, ks=(1, 3, 4))
    # A constant scorer puts every right candidate after every wrong one.
    # I2T: image 0 has 3 wrong texts, image 1 has 4, image 2 has 3. T2I: 2 wrong images each.
    assert got == pytest.approx({"i2t_r1": 0, "i2t_r3": 0, "i2t_r4": 2 / 3,
                                 "t2i_r1": 0, "t2i_r3": 1, "t2i_r4": 1})


def test_recall_image_without_texts_is_only_a_distractor():
    scores = np.array([
        [0.9, 0.1, 0.4],
        [0.1, 0.8, 0.3],   # text 2 (image 1) has image 0 and image 2 above it
        [1.0, 1.0, 1.0],   # image 2 has no text: it outranks every right image in T2I
    ])
    got = recall_at_k(scores, [0, 1, 1], ks=(1, 2))
    assert got == pytest.approx({"i2t_r1": 1.0, "i2t_r2": 1.0, "t2i_r1": 0.0, "t2i_r2": 2 / 3})


@pytest.mark.parametrize("text_to_image, ks", [
    ([0, 0, 1, 2], (1,)),          # wrong length
    ([0, 0, 1, 2, 3], (1,)),       # image 3 does not exist
    ([0, 0, 1, 2, -1], (1,)),      # negative index
    ([0.0, 0, 1, 2, 2], (1,)),     # not integers
    ([0, 0, 1, 2, 2], (0, 1)),     # K must be positive
    ([0, 0, 1, 2, 2], ()),         # no K at all
])
def test_recall_rejects_bad_input(text_to_image, ks):
    with pytest.raises(MetricInputError):
        recall_at_k(S, text_to_image, ks=ks)


def _first_relevant(scores: np.ndarray, relevant: np.ndarray) -> int:
    """Brute force: sort by score desc with relevant candidates last among ties."""
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], bool(relevant[c])))
    return next(pos for pos, c in enumerate(order) if relevant[c])


def _reference_recall(scores: np.ndarray, text_to_image: np.ndarray, ks) -> dict[str, float]:
    n_images, n_texts = scores.shape
    i2t = [_first_relevant(scores[i], text_to_image == i) for i in range(n_images) if (text_to_image == i).any()]
    t2i = [_first_relevant(scores[:, t], np.arange(n_images) == text_to_image[t]) for t in range(n_texts)]
    out = {f"i2t_r{k}": sum(r < k for r in i2t) / len(i2t) for k in ks}
    return {**out, **{f"t2i_r{k}": sum(r < k for r in t2i) / len(t2i) for k in ks}}


def _random_problem(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_images, n_texts = rng.integers(1, 12), rng.integers(1, 30)
    text_to_image = rng.integers(0, n_images, size=n_texts)  # some images may get no text
    # Every other seed uses a few integer levels so that ties are everywhere.
    scores = rng.integers(0, 4, size=(n_images, n_texts)) if seed % 2 else rng.normal(size=(n_images, n_texts))
    return scores.astype(np.float32), text_to_image


@pytest.mark.parametrize("seed", range(20))
def test_recall_matches_brute_force(seed):
    scores, text_to_image = _random_problem(seed)
    ks = (1, 2, 5, 10, 50)
    assert recall_at_k(scores, text_to_image, ks) == pytest.approx(_reference_recall(scores, text_to_image, ks))


# --- two-stage ranking --------------------------------------------------------------------------

# 3 images, 3 texts, text t belongs to image t. With k=2:
# I2T: image 0 -> [t1, t0] (own text second), image 1 -> [t0, t2] (own t1 ties t2 and loses, so it
#      is left out), image 2 -> [t1, t2].
# T2I: t0 -> [i1, i0], t1 -> [i0, i2] (own image 1 is last), t2 -> [i2, i0].
G = np.array([
    [0.5, 0.8, 0.3],
    [0.9, 0.2, 0.2],
    [0.1, 0.7, 0.6],
])
PERFECT_HEAD = 10.0 * np.eye(3)


class RecordingHead:
    """A pairwise head that looks scores up in a matrix and records what it was asked."""

    def __init__(self, scores: np.ndarray):
        self.scores = scores
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        self.calls.append((image_idx.copy(), text_idx.copy()))
        return self.scores[image_idx, text_idx]

    def pairs(self) -> list[tuple[int, int]]:
        return sorted((int(i), int(t)) for imgs, txts in self.calls for i, t in zip(imgs, txts))


def test_two_stage_head_fixes_top_k_but_not_beyond():
    head = RecordingHead(PERFECT_HEAD)
    got = two_stage(G, head, np.arange(3), k=2)
    assert got.i2t.top.tolist() == [[0, 1], [0, 2], [2, 1]]
    assert got.t2i.top.tolist() == [[0, 1], [0, 2], [2, 0]]
    # Image 1 and text 1 had their match outside the top 2: it stays at global rank 2.
    assert got.i2t.rank.tolist() == [0, 2, 0]
    assert got.t2i.rank.tolist() == [0, 2, 0]
    assert recall_at_k(G, np.arange(3), ks=(1, 2)) == pytest.approx(
        {"i2t_r1": 0, "i2t_r2": 2 / 3, "t2i_r1": 1 / 3, "t2i_r2": 2 / 3})
    assert got.recall(ks=(1, 2, 3)) == pytest.approx(
        {"i2t_r1": 2 / 3, "i2t_r2": 2 / 3, "i2t_r3": 1, "t2i_r1": 2 / 3, "t2i_r2": 2 / 3, "t2i_r3": 1})


def test_two_stage_scores_only_top_k_pairs_in_batches():
    head = RecordingHead(PERFECT_HEAD)
    got = two_stage(G, head, np.arange(3), k=2, batch_size=4)
    assert (got.i2t.pairs_scored, got.t2i.pairs_scored, got.pairs_scored) == (6, 6, 12)
    assert [len(imgs) for imgs, _ in head.calls] == [4, 2, 4, 2]
    # Pairs are (image, text) in both directions: I2T candidates then T2I candidates.
    i2t_pairs = [(0, 1), (0, 0), (1, 0), (1, 2), (2, 1), (2, 2)]
    t2i_pairs = [(1, 0), (0, 0), (0, 1), (2, 1), (2, 2), (0, 2)]
    assert head.pairs() == sorted(i2t_pairs + t2i_pairs)


def test_two_stage_pair_count_is_queries_times_k():
    rng = np.random.default_rng(0)
    n_images, n_texts, k = 20, 100, 7
    text_to_image = np.repeat(np.arange(n_images), 5)
    head = RecordingHead(rng.normal(size=(n_images, n_texts)))
    got = two_stage(rng.normal(size=(n_images, n_texts)), head, text_to_image, k=k, batch_size=64)
    assert got.pairs_scored == (n_images + n_texts) * k == len(head.pairs())
    assert got.pairs_scored < n_images * n_texts
    assert max(len(imgs) for imgs, _ in head.calls) <= 64


def test_two_stage_head_ties_do_not_help():
    got = two_stage(G, RecordingHead(np.zeros((3, 3))), np.arange(3), k=2)
    # A constant head puts the own candidate after the wrong one inside the top 2.
    assert got.i2t.rank.tolist() == [1, 2, 1]
    assert got.recall(ks=(1,))["i2t_r1"] == 0.0


def test_two_stage_k_clipped_to_candidates():
    got = two_stage(G, RecordingHead(PERFECT_HEAD), np.arange(3), k=50)
    assert got.i2t.top.shape == got.t2i.top.shape == (3, 3)
    assert got.recall(ks=(1,)) == {"i2t_r1": 1.0, "t2i_r1": 1.0}


@pytest.mark.parametrize("bad_head", [
    lambda i, t: np.zeros(len(i) + 1),       # wrong number of scores
    lambda i, t: np.full(len(i), np.nan),    # NaN
])
def test_two_stage_rejects_bad_head_output(bad_head):
    with pytest.raises(MetricInputError, match="rescore"):
        two_stage(G, bad_head, np.arange(3), k=2)


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 2, "batch_size": 0}])
def test_two_stage_rejects_bad_options(kwargs):
    with pytest.raises(MetricInputError):
        two_stage(G, RecordingHead(PERFECT_HEAD), np.arange(3), **kwargs)


def _reference_two_stage_rank(g: np.ndarray, h: np.ndarray, relevant: np.ndarray, k: int) -> int:
    """Brute force for one query: global order (relevant last among ties), head re-orders the
    first k (relevant last among ties, then global order), the rest keep their order."""
    order = sorted(range(len(g)), key=lambda c: (-g[c], bool(relevant[c])))
    head_part = sorted(range(min(k, len(order))), key=lambda p: (-h[order[p]], bool(relevant[order[p]]), p))
    final = [order[p] for p in head_part] + order[k:]
    return next(pos for pos, c in enumerate(final) if relevant[c])


@pytest.mark.parametrize("seed", range(20))
def test_two_stage_matches_brute_force(seed):
    g, text_to_image = _random_problem(seed)
    h, _ = _random_problem(seed + 1000)
    h = np.resize(h, g.shape)  # any head scores of the right shape
    n_images, n_texts = g.shape
    k = 1 + seed % 4
    got = two_stage(g, RecordingHead(h), text_to_image, k=k, batch_size=5)
    images = [i for i in range(n_images) if (text_to_image == i).any()]
    assert got.i2t.queries.tolist() == images
    assert got.i2t.rank.tolist() == [
        _reference_two_stage_rank(g[i], h[i], text_to_image == i, k) for i in images]
    assert got.t2i.rank.tolist() == [
        _reference_two_stage_rank(g[:, t], h[:, t], np.arange(n_images) == text_to_image[t], k)
        for t in range(n_texts)]


@pytest.mark.parametrize("seed", range(10))
def test_two_stage_extremes_match_single_stage(seed):
    g, text_to_image = _random_problem(seed)
    h, _ = _random_problem(seed + 1000)
    h = np.resize(h, g.shape)
    ks = (1, 5, 10)
    # A head that agrees with the global scores changes no recall, whatever k.
    assert two_stage(g, RecordingHead(g), text_to_image, k=3).recall(ks) == recall_at_k(g, text_to_image, ks)
    # Re-ranking every candidate is the same as ranking with the head alone.
    assert two_stage(g, RecordingHead(h), text_to_image, k=max(g.shape)).recall(ks) == recall_at_k(
        h, text_to_image, ks)


# --- Markdown -----------------------------------------------------------------------------------


def test_markdown_table():
    rows = {
        "CLIP ViT-B/32": {"add_att": 0.688, "average": 0.7312},
        "fine-tuned | COCO": {"add_att": 0.8, "swap": None, "n": "7511"},
    }
    assert markdown_table(rows) == (
        "| method | add_att | average | swap | n |\n"
        "|---|---:|---:|---:|---:|\n"
        "| CLIP ViT-B/32 | 68.8 | 73.1 | - | - |\n"
        "| fine-tuned \\| COCO | 80.0 | - | - | 7511 |\n"
    )


def test_markdown_table_column_selection():
    table = markdown_table({"a": {"x": 1.0, "y": np.float32(0.25)}}, columns=["y"], index_name="model")
    assert table == "| model | y |\n|---|---:|\n| a | 25.0 |\n"


def test_markdown_table_rejects_non_numbers():
    with pytest.raises(MetricInputError):
        markdown_table({"a": {"x": [0.5]}})
