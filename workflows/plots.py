"""The demo's figures (matplotlib, no screen): accuracy by negative type, training curves, example
scenes with every method's verdict, and the complexity sweep."""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from .report import SPLIT_NAMES

SUBSETS = ("swap_att", "swap_att_hard", "swap_obj", "replace_att", "replace_rel", "add_obj", "count")


def bars_by_type(path: str, results: dict[str, dict[str, Any]]) -> str:
    methods = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(16, 5), sharey=True)
    width = 0.8 / len(methods)
    for ax, (split, name) in zip(axes, SPLIT_NAMES.items()):
        subsets = [s for s in SUBSETS if any(s in r[split].get("caption_accuracy", {}).get("by_subset", {})
                                             for r in results.values())]
        x = np.arange(len(subsets))
        for i, method in enumerate(methods):
            by_subset = results[method][split].get("caption_accuracy", {}).get("by_subset", {})
            ax.bar(x + i * width, [100 * by_subset.get(s, np.nan) for s in subsets], width, label=method)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x + 0.4 - width / 2, subsets, rotation=30, ha="right")
        ax.set_title(f"{name}: caption above its negative")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("accuracy, %")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    return _save(fig, path, bottom=0.14)


def training_curves(path: str, curves: dict[str, str]) -> str | None:
    """Each head's training loss; accuracy during training too when a run evaluated often enough."""
    if not curves:
        return None
    logs = {head: _records(log) for head, log in curves.items()}
    evals = {head: [r for r in records if "eval" in r] for head, records in logs.items()}
    with_curves = any(len(e) >= 3 for e in evals.values())
    fig, axes = plt.subplots(1, 2 if with_curves else 1, figsize=(12 if with_curves else 6.5, 4), squeeze=False)
    for head, records in logs.items():
        steps = [r for r in records if "loss" in r]
        axes[0][0].plot([r["step"] for r in steps], [r["loss"] for r in steps], label=head)
        for dataset in sorted({d for r in evals[head] for d in r["eval"]}) if with_curves else ():
            points = [r for r in evals[head] if dataset in r["eval"]]
            axes[0][1].plot([r["step"] for r in points], [100 * r["eval"][dataset]["accuracy"] for r in points],
                            marker="o", label=f"{head} {dataset}")
    axes[0][0].set(title="training loss", xlabel="step")
    axes[0][0].legend(fontsize=8)
    if with_curves:
        axes[0][1].set(title="accuracy during training, %", xlabel="step")
        axes[0][1].legend(fontsize=7)
    return _save(fig, path)


def _records(log: str) -> list[dict[str, Any]]:
    with open(log) as f:
        return [json.loads(line) for line in f]


def example_scenes(path: str, results: dict[str, dict[str, Any]], world_dir: str, n: int = 4) -> str | None:
    """Out-of-domain hard swaps (or any swaps): the image, both captions, and who got it right."""
    rows = _rows(os.path.join(world_dir, "test_ood.jsonl"))
    picked = [r for r in rows if r["subset"] == "swap_att_hard"][:n] or [r for r in rows if r["type"] == "swap"][:n]
    if not picked:
        return None
    fig, axes = plt.subplots(1, len(picked), figsize=(4.2 * len(picked), 6.5), squeeze=False)
    for ax, row in zip(axes[0], picked):
        ax.imshow(Image.open(os.path.join(world_dir, row["image"])))
        ax.axis("off")
        verdicts = []
        for method, by_split in results.items():
            scores = by_split["test_ood"].get("item_scores")
            if scores and row["item_id"] in scores["item_id"]:
                i = scores["item_id"].index(row["item_id"])
                right = scores["positive"][i] > scores["negative"][i]
                verdicts.append(f"{'✓' if right else '✗'} {method}")
        caption = textwrap.fill(f"+ {row['caption']}", 48)
        negative = textwrap.fill(f"- {row['negative_caption']}", 48)
        ax.set_title(f"{caption}\n{negative}", fontsize=7, loc="left")
        ax.text(0, -0.02, "\n".join(verdicts), transform=ax.transAxes, va="top", fontsize=7, family="monospace")
    return _save(fig, path)


def sweep(path: str, points: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    """Each headline in `keys` against scene complexity, one line per method, a column per split."""
    fig, axes = plt.subplots(len(keys), 2, figsize=(13, 4 * len(keys)), sharex=True, squeeze=False)
    labels = [p["label"] for p in points]
    methods = list(points[0]["results"])
    for col, (split, name) in enumerate(SPLIT_NAMES.items()):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            for method in methods:
                values = [100 * p["results"][method][split].get(key, np.nan) for p in points]
                ax.plot(labels, values, marker="o", label=method)
            ax.set(title=f"{name}: {key}, %", ylim=(0, 100))
            ax.tick_params(axis="x", rotation=20)
    axes[0][1].legend(fontsize=7)
    return _save(fig, path)


def _rows(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def _save(fig, path: str, bottom: float = 0.0) -> str:
    fig.tight_layout(rect=(0, bottom, 1, 1))  # `bottom` leaves room for a figure legend
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
