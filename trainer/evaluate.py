"""Evaluation of a head on a dataset of the store: SugarCrepe-style accuracy (per subset, SWAP
subsets on their own), BiVLC-style I2T/T2I/group (by type and subtype) where items have negative
images, and retrieval recall@K (two-stage for pairwise heads, with the pairs it scored)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cache_schemas import DatasetTables, SpaceEmbeddings

from . import metrics
from .data import Batch, BatchLoader, Examples
from .heads import Head
from .health import Health


def evaluate(space: SpaceEmbeddings, dataset: DatasetTables, head: Head, *, split: str | None = None,
             device: str = "cpu", batch_size: int = 128, retrieval_k: int = 16,
             progress: bool = False) -> dict[str, Any]:
    """The head's report on the dataset (`retrieval_k` 0: no retrieval; `progress`: a bar on stderr)."""
    examples = Examples.from_dataset(space, dataset, split)
    loader = BatchLoader(space, examples, head.needs | {"image.global", "text.global"}, batch_size, shuffle=False)
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            pos, neg, bivlc, order = _pair_scores(loader, head, torch.device(device), progress)
            retrieval = _retrieval(loader, head, torch.device(device), retrieval_k) if retrieval_k else None
    finally:
        head.train(was_training)
    report = report_from_scores(examples, order, pos, neg, bivlc)
    report.update({"dataset": dataset.name, "split": split, "space": space.key, "head": head.name})
    if retrieval:
        report["retrieval"] = retrieval
    return report


def report_from_scores(examples: Examples, order: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                       bivlc: np.ndarray) -> dict[str, Any]:
    """Metrics from per-item scores, whatever produced them (a head, the diagnostic).

    order: (N,) example index of each score row; pos: (N,) positive caption; neg: (N, K) negatives,
    -inf where none; bivlc: (N, 2, 2) [item, caption, image], NaN where the item has no negative image.
    The per-item scores ride along under "item_scores" (`write_report` leaves them out of report.json)."""
    report: dict[str, Any] = {"items": len(examples), "items_without_content": examples.dropped}
    report.update(_caption_report(examples, order, pos, neg))
    report.update(_bivlc_report(examples, order, bivlc))
    report["item_scores"] = {"item_id": examples.item_id[order].tolist(), "positive": pos.tolist(),
                             "negative": neg[:, 0].tolist()}
    return report


def _pair_scores(loader: BatchLoader, head: Head, device: torch.device, progress: bool = False):
    """Per item: the positive's score, the negatives' (-inf where none), and the (2, 2) BiVLC matrix
    (NaN where the item has no negative image)."""
    pos, neg, bivlc, order = [], [], [], []
    batches = tqdm(loader, total=math.ceil(len(loader.examples) / loader.batch_size), desc=f"evaluating {head.name}",
                   unit="batch", disable=not progress)
    for batch in batches:
        scores = _score_items(head, batch.to(device))
        pos.append(scores[0])
        neg.append(scores[1])
        bivlc.append(scores[2])
        order.append(batch.examples)
    return np.concatenate(pos), np.concatenate(neg), np.concatenate(bivlc), np.concatenate(order)


def _score_items(head: Head, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, k = batch.negatives.shape
    items = torch.arange(b, device=batch.positive.device)
    negatives = batch.negatives.clamp(min=0)
    neg_image = batch.negative_images[:, 0].clamp(min=0)
    first_negative = negatives[:, 0]
    image_index = torch.cat([items, items.repeat_interleave(k), neg_image, neg_image])
    text_index = torch.cat([batch.positive, negatives.reshape(-1), batch.positive, first_negative])
    s = head.score(batch.images, batch.texts, image_index, text_index).float().cpu().numpy()
    pos, neg, i1c0, i1c1 = np.split(s, [b, b + b * k, b + b * k + b])
    neg = np.where(batch.negatives.cpu().numpy() >= 0, neg.reshape(b, k), -np.inf)
    bivlc = np.stack([np.stack([pos, i1c0], 1), np.stack([neg[:, 0], i1c1], 1)], 1)  # [item, caption, image]
    has_image = (batch.negative_images[:, 0] >= 0).cpu().numpy() & (batch.negatives[:, 0] >= 0).cpu().numpy()
    bivlc[~has_image] = np.nan
    return pos, neg, bivlc


def _caption_report(examples: Examples, order: np.ndarray, pos, neg) -> dict[str, Any]:
    has = np.isfinite(neg).any(axis=1)
    if not has.any():
        return {}
    correct = metrics.caption_correct(pos[has], np.where(np.isfinite(neg[has]), neg[has], -np.inf))
    subsets = examples.subset[order][has]
    swap = np.array([str(s).startswith("swap") for s in subsets])
    chance = 1.0 / (1 + np.isfinite(neg[has]).sum(axis=1))  # a random score ranks the positive first
    out = {"by_subset": metrics.grouped_mean(correct, list(subsets)),
           "macro": metrics.macro_mean(correct, list(subsets)), "items": int(has.sum()),
           "chance_by_subset": metrics.grouped_mean(chance, list(subsets))}
    if swap.any():
        out["swap"] = float(correct[swap].mean())
        out["swap_macro"] = metrics.macro_mean(correct[swap], list(subsets[swap]))
    return {"caption_accuracy": out}


def _bivlc_report(examples: Examples, order: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    has = ~np.isnan(s).any(axis=(1, 2))
    if not has.any():
        return {}
    outcome = metrics.bivlc_correct(s[has])
    keys = [f"{t}/{st}" for t, st in zip(examples.type[order][has], examples.subtype[order][has])]
    types = [str(t) for t in examples.type[order][has]]
    return {"bivlc": {name: {"by_type": metrics.grouped_mean(getattr(outcome, name), types),
                             "by_subtype": metrics.grouped_mean(getattr(outcome, name), keys)}
                      for name in ("i2t", "t2i", "group")} | {"items": int(has.sum())}}


def _retrieval(loader: BatchLoader, head: Head, device: torch.device, k: int) -> dict[str, Any] | None:
    """Recall@K over the dataset's unique images and captions (each caption belongs to its first image)."""
    ex = loader.examples
    image_rows, image_of_item = np.unique(ex.image, return_inverse=True)
    text_rows, first_item = np.unique(ex.caption, return_index=True)
    if len(image_rows) < 2:
        return None
    text_to_image = image_of_item[first_item]
    image_global = torch.from_numpy(loader.space.read("image_global", image_rows)).float()
    text_global = torch.from_numpy(loader.space.read("text_global", text_rows)).float()
    G = (F.normalize(image_global, dim=-1) @ F.normalize(text_global, dim=-1).T).numpy()
    if not head.pairwise:
        images = {"global": image_global.to(device)}
        texts = {"global": text_global.to(device)}
        S = head.matrix(images, texts).cpu().numpy() if hasattr(head, "matrix") else G
        return {**metrics.recall_at_k(S, text_to_image), "pairs_scored": int(S.size), "two_stage_k": None}

    def rescore(image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
        images, image_pos = np.unique(image_rows[image_index], return_inverse=True)
        texts, text_pos = np.unique(text_rows[text_index], return_inverse=True)
        batch_images = {n: t.to(device).float() for n, t in loader.image_inputs(images).items()}
        batch_texts = {n: (t.to(device).float() if t.is_floating_point() else t.to(device))
                       for n, t in loader.text_inputs(texts).items()}
        index = (torch.from_numpy(image_pos).to(device), torch.from_numpy(text_pos).to(device))
        return head.score(batch_images, batch_texts, *index).float().cpu().numpy()

    result = metrics.two_stage(G, rescore, text_to_image, k, batch_size=512)
    return {**result.recall(), "pairs_scored": result.pairs_scored, "two_stage_k": min(k, G.shape[1]),
            "all_pairs": int(G.size), "global_first_stage": metrics.recall_at_k(G, text_to_image)}


def write_report(report: dict[str, Any], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({k: v for k, v in report.items() if k != "item_scores"}, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['head']} on {report['dataset']}", "",
             f"Space `{report['space']}`; {report['items']} items "
             f"({report['items_without_content']} skipped: content not in the space).", ""]
    health = Health(**report["training"]) if report.get("training") else None
    if health is not None and health.at_chance:
        lines += [f"**Warning: this head did not train**: {health.sentence()}.", ""]
    if "caption_accuracy" in report:
        acc = report["caption_accuracy"]
        rows = {name: {"accuracy": value} for name, value in acc["by_subset"].items()}
        rows["macro (mean of subsets)"] = {"accuracy": acc["macro"]}
        if "swap" in acc:
            rows["swap subsets"] = {"accuracy": acc["swap"]}
        lines += ["## Caption accuracy (positive above every negative)", "",
                  metrics.markdown_table(rows, index_name="subset")]
    if "bivlc" in report:
        b = report["bivlc"]
        rows = {key: {name: b[name]["by_subtype"][key] for name in ("i2t", "t2i", "group")}
                for key in b["group"]["by_subtype"]}
        lines += ["## BiVLC-style scores", "", metrics.markdown_table(rows, index_name="type/subtype")]
    if "retrieval" in report:
        r = report["retrieval"]
        columns = [c for c in r if c.startswith(("i2t_r", "t2i_r"))]
        cost = f"two-stage, global top {r['two_stage_k']} re-ranked: " if r.get("two_stage_k") else ""
        lines += ["## Retrieval", "", metrics.markdown_table({report["head"]: {c: r[c] for c in columns}}, columns),
                  f"{cost}{r['pairs_scored']} pairs scored by the head.", ""]
    return "\n".join(lines)
