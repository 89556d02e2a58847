"""The demo's figures (matplotlib, no screen): accuracy by negative type, the positive control,
training curves (every seed), example scenes with every method's verdict, and the complexity sweep."""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image

from cache_schemas import VlcacheError
from cache_schemas.location import atomic_file

from .results import SPLIT_NAMES, Results

SUBSETS = ("swap_att", "swap_att_hard", "swap_obj", "replace_att", "replace_rel", "add_obj", "count")


def bars_by_type(path: str, results: Results) -> str:
    """Accuracy per subset (mean over seeds) of every method, a panel per test split."""
    fig, axes = plt.subplots(1, 2, figsize=(16, 5), sharey=True)
    for ax, (split, name) in zip(axes, SPLIT_NAMES.items()):
        means = {m: results.mean_by_subset(m, split) for m in results.methods}
        subsets = [s for s in SUBSETS if any(s in by_subset for by_subset in means.values())]
        subset_bars(ax, means, subsets, [0.5] * len(subsets), f"{name}: caption above its negative")
    axes[0].set_ylabel("accuracy, %")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    return _save(fig, path, bottom=0.14)


def subset_bars(ax, values: dict[str, dict[str, float]], subsets: list[str], chance: list[float], title: str,
                chance_label: str = "chance") -> None:
    """Accuracy (0-1) per subset, a bar per series (`values`: series -> subset -> accuracy), each subset's
    chance level dashed. The demo's by-type figure and `vlcache plot` of a report draw with it."""
    x = np.arange(len(subsets))
    width = 0.8 / len(values)
    for i, (series, by_subset) in enumerate(values.items()):
        bars = ax.bar(x + i * width, [100 * by_subset.get(s, np.nan) for s in subsets], width, label=series)
        if len(values) * len(subsets) <= 24:  # room to print each value
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    if len(set(chance)) == 1:
        ax.axhline(100 * chance[0], color="grey", lw=0.8, ls="--", label=chance_label)
    else:
        left = x - width / 2  # each subset's group of bars spans [left, left + 0.8]
        ax.hlines([100 * c for c in chance], left - 0.05, left + 0.85, color="grey", lw=1.0, ls="--",
                  label=chance_label)
    ax.set_xticks(x + 0.4 - width / 2, subsets, rotation=30, ha="right")
    ax.set_title(title)
    _percent_axis(ax)


def _percent_axis(ax) -> None:
    """0-100% ticks with headroom above 100, so that a bar's value label clears the frame."""
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))


def _legend_outside(ax) -> None:
    """The legend right of the axes, where it hides no bar (tight_layout makes room for it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


# A random score's chance: I2T and T2I each need two comparisons right (1/4); group, that the two
# right pairs outscore both wrong ones (2! 2! / 4! = 1/6).
BIVLC_CHANCE = {"i2t": 0.25, "t2i": 0.25, "group": 1 / 6}


def report_bars(path: str, report: dict[str, Any]) -> str:
    """An evaluation report's caption accuracy per subset, and BiVLC I2T/T2I/group per type where it has
    them, each against its chance level."""
    return _save(report_figure(report), path)


def report_figure(report: dict[str, Any]):
    """`report_bars`' figure, unsaved."""
    panels = [p for p in ("caption_accuracy", "bivlc") if p in report]
    if not panels:
        raise VlcacheError("the report has no accuracy to plot (neither caption accuracy nor BiVLC scores)")
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        (_caption_panel if panel == "caption_accuracy" else _bivlc_panel)(ax, report[panel], report["head"])
        ax.set_ylabel("accuracy, %")
        _legend_outside(ax)
    health = report.get("training") or {}
    warning = " (did not train: its loss stayed at chance)" if health.get("status") == "at chance" else ""
    fig.suptitle(f"{report['head']} on {report['dataset']}{warning}")
    fig.tight_layout()
    return fig


def _caption_panel(ax, acc: dict[str, Any], head: str) -> None:
    by_subset = acc["by_subset"]
    subsets = sorted(s for s in by_subset if s != "all") + ["all"]
    chance = acc.get("chance_by_subset")  # reports before it was recorded: one negative per item
    subset_bars(ax, {head: by_subset}, subsets, [chance[s] for s in subsets] if chance else [0.5] * len(subsets),
                f"caption above its negatives, per subset ({acc['items']} items)",
                "chance" if chance else "chance (one negative)")


def _bivlc_panel(ax, bivlc: dict[str, Any], head: str) -> None:
    types = sorted(t for t in bivlc["group"]["by_type"] if t != "all") + ["all"]
    subset_bars(ax, {name.upper() if name != "group" else name: bivlc[name]["by_type"] for name in BIVLC_CHANCE},
                types, [BIVLC_CHANCE["i2t"]] * len(types), f"{head}: BiVLC scores per type ({bivlc['items']} items)",
                "chance, I2T and T2I")
    ax.axhline(100 * BIVLC_CHANCE["group"], color="grey", lw=0.8, ls=":", label="chance, group")


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
        ax.set_title(f"positive control, {name}")
        _percent_axis(ax)
    axes[0].set_ylabel("accuracy, %")
    _legend_outside(axes[1])
    return _save(fig, path)


def training_curves(path: str, logs: dict[str, list[str]], evals: bool = False) -> str | None:
    """Each head's training loss for every seed (a run's JSONL log each), with its chance level (ln K);
    with `evals`, a second panel of the periodic evaluations' accuracies where the logs have some."""
    if not logs:
        return None
    records = {head: [read_log(log) for log in paths] for head, paths in logs.items()}
    scored = evals and any("eval" in r for runs in records.values() for run in runs for r in run)
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(13 if scored else 7, 4), squeeze=False)
    _losses(axes[0][0], records)
    if scored:
        _evaluations(axes[0][1], records)
    return _save(fig, path)


def _losses(ax, records: dict[str, list[list[dict[str, Any]]]]) -> None:
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (head, runs) in zip(colours, records.items()):
        for i, run in enumerate(runs):
            steps = [r for r in run if "loss" in r]
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=colour, alpha=0.8,
                    marker="." if len(steps) < 30 else None, label=head if i == 0 else None)
            chance = _chance(run)
            if i == 0 and chance is not None:
                ax.axhline(chance, color=colour, lw=0.8, ls=":")
    one = sum(len(runs) for runs in records.values()) == 1
    ax.set(title=f"{next(iter(records))}: training loss (dotted: chance, ln K)" if one else
           "training loss, every seed (dotted: chance, ln K)", xlabel="step", ylabel="loss")
    ax.legend(fontsize=8)


def _chance(run: list[dict[str, Any]]) -> float | None:
    """The chance loss (ln K) a run logged with its steps, or in its health at the end."""
    logged = [r["chance_loss"] for r in run if "chance_loss" in r]
    if logged:
        return float(np.mean(logged))
    ends = [r["health"].get("chance_loss") for r in run if isinstance(r.get("health"), dict)]
    return next((float(c) for c in ends if c is not None), None)


def _evaluations(ax, records: dict[str, list[list[dict[str, Any]]]]) -> None:
    """Each evaluated dataset's headline accuracies against the step they were measured at."""
    for head, runs in records.items():
        points = [(r["step"], name, metric, value) for run in runs[:1] for r in run if "eval" in r
                  for name, headline in r["eval"].items() for metric, value in headline.items()
                  if metric in ("accuracy", "group")]
        for name, metric in dict.fromkeys((n, m) for _, n, m, _ in points):
            line = [(s, v) for s, n, m, v in points if (n, m) == (name, metric)]
            ax.plot(*zip(*[(s, 100 * v) for s, v in line]), marker="o",
                    label=f"{name} {metric}" if len(records) == 1 else f"{head}: {name} {metric}")
    ax.set(title="periodic evaluation", xlabel="step", ylabel="accuracy, %", ylim=(0, 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)


def read_log(log: str) -> list[dict[str, Any]]:
    try:
        with open(log, encoding="utf-8") as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:  # a folder, a binary file
        raise VlcacheError(f"{log} cannot be read as a training log ({type(exc).__name__})") from None
    records = []
    for n, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise VlcacheError(f"{log} is damaged: line {n} is not JSON ({exc.msg})") from None
    return records


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
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str, dpi: int) -> str:
    """The figure as a whole file or none (a full disk is one line naming it); closed either way."""
    try:
        with atomic_file(path) as f:
            fig.savefig(f, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
    finally:
        plt.close(fig)
    return path
