"""The demo's figures (matplotlib, no screen): accuracy by negative type, the positive control,
training curves (every seed), example scenes with every method's verdict, and the complexity sweep."""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from .results import SPLIT_NAMES, Results

SUBSETS = ("swap_att", "swap_att_hard", "swap_obj", "replace_att", "replace_rel", "add_obj", "count")


def bars_by_type(path: str, results: Results) -> str:
    """Accuracy per subset (mean over seeds) of every method, a panel per test split."""
    methods = results.methods
    fig, axes = plt.subplots(1, 2, figsize=(16, 5), sharey=True)
    width = 0.8 / len(methods)
    for ax, (split, name) in zip(axes, SPLIT_NAMES.items()):
        means = {m: results.mean_by_subset(m, split) for m in methods}
        subsets = [s for s in SUBSETS if any(s in by_subset for by_subset in means.values())]
        x = np.arange(len(subsets))
        for i, method in enumerate(methods):
            ax.bar(x + i * width, [100 * means[method].get(s, np.nan) for s in subsets], width, label=method)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x + 0.4 - width / 2, subsets, rotation=30, ha="right")
        ax.set_title(f"{name}: caption above its negative")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("accuracy, %")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    return _save(fig, path, bottom=0.14)


def control_bars(path: str, control: Results) -> str:
    """The positive control: attribute swaps and replacements per method, with standard errors over seeds."""
    keys = ("attribute swap", "replace")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (split, name) in zip(axes, SPLIT_NAMES.items()):
        x = np.arange(len(control.methods))
        for i, key in enumerate(keys):
            e = [control.estimate(m, split, key) for m in control.methods]
            ax.bar(x + i * 0.4, [100 * v.mean for v in e], 0.4, yerr=[100 * v.se_seeds for v in e], label=key,
                   capsize=3)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x + 0.2, control.methods, rotation=20, ha="right")
        ax.set(title=f"positive control, {name}", ylim=(0, 105))
    axes[0].set_ylabel("accuracy, %")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def training_curves(path: str, logs: dict[str, list[str]]) -> str | None:
    """Each head's training loss for every seed, with its chance level (ln K)."""
    if not logs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for colour, (head, paths) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], logs.items()):
        for i, log in enumerate(paths):
            steps = [r for r in _records(log) if "loss" in r]
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=colour, alpha=0.8,
                    label=head if i == 0 else None)
            if i == 0 and steps and "chance_loss" in steps[0]:
                ax.axhline(np.mean([r["chance_loss"] for r in steps]), color=colour, lw=0.8, ls=":")
    ax.set(title="training loss, every seed (dotted: chance, ln K)", xlabel="step")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _records(log: str) -> list[dict[str, Any]]:
    with open(log) as f:
        return [json.loads(line) for line in f]


def example_scenes(path: str, results: Results, world_dir: str, n: int = 4) -> str | None:
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
        for method, by_split in results.reports.items():  # the first seed's scores
            scores = by_split["test_ood"][0].get("item_scores")
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
    """Each headline in `keys` against scene complexity, one line per method (error bars: standard
    error over seeds), a column per split."""
    fig, axes = plt.subplots(len(keys), 2, figsize=(13, 4 * len(keys)), sharex=True, squeeze=False)
    labels = [p["label"] for p in points]
    methods = list(points[0]["results"])
    for col, (split, name) in enumerate(SPLIT_NAMES.items()):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            for method in methods:
                values = [p["results"][method][split][key] for p in points]
                ax.errorbar(labels, [100 * v["mean"] for v in values], yerr=[100 * v["se_seeds"] for v in values],
                            marker="o", capsize=3, label=method)
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
