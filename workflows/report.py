"""The demo's report: one Markdown file with the run's own numbers stated plainly, report.json, and
PNG plots (per-type bars, training curves, example scenes with their scores)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from trainer.metrics import markdown_table

SPLIT_NAMES = {"test_id": "in-domain", "test_ood": "out-of-domain"}
SWAP = ("swap_att", "swap_att_hard", "swap_obj")  # SugarCrepe's SWAP: attributes and objects
ATTRIBUTE_SWAP = ("swap_att", "swap_att_hard")  # binding: the same words, other pairs
REPLACE = ("replace_att", "add_obj")  # content: a word the scene does not support
RELATION = ("swap_obj", "replace_rel")  # spatial relations, reversed or replaced
# A global cosine counts as bag-of-words-like on swaps when it trails its replace accuracy by this much.
WEAK_GAP = 0.10


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The few numbers the study turns on, from one method's report on one split."""
    by_subset = report.get("caption_accuracy", {}).get("by_subset", {})
    out = {"all": by_subset.get("all", np.nan), "swap": _mean(by_subset, SWAP),
           "attribute swap": _mean(by_subset, ATTRIBUTE_SWAP), "hard swap": by_subset.get("swap_att_hard", np.nan),
           "replace": _mean(by_subset, REPLACE), "relation": _mean(by_subset, RELATION)}
    if "bivlc" in report:
        out["group"] = report["bivlc"]["group"]["by_type"].get("all", np.nan)
        out["swap group"] = report["bivlc"]["group"]["by_type"].get("swap", np.nan)
    return {k: float(v) for k, v in out.items()}


def _mean(by_subset: dict[str, float], names: tuple[str, ...]) -> float:
    values = [by_subset[n] for n in names if n in by_subset]
    return float(np.mean(values)) if values else np.nan


def verdicts(headlines: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """What the numbers say, in sentences; computed, so they stay true whatever the run measured."""
    return encoder_verdicts(headlines["global"]) + _comparisons(headlines)


def encoder_verdicts(g: dict[str, dict[str, float]]) -> list[str]:
    """Whether the frozen encoder's global cosine is bag-of-words-like on swaps, per test split."""
    lines = []
    for split, name in SPLIT_NAMES.items():
        h = g[split]
        gap = h["replace"] - h["attribute swap"]
        verdict = (f"**bag-of-words-like on swaps** (a gap of {100 * gap:.1f} points)" if gap >= WEAK_GAP else
                   f"**not** bag-of-words-like on swaps here (a gap of {100 * gap:.1f} points, under the "
                   f"{100 * WEAK_GAP:.0f} this report calls weak)")
        lines.append(
            f"- {name}: the frozen encoder's global cosine scores {_pc(h['attribute swap'])} on attribute swaps "
            f"({_pc(h['hard swap'])} on hard swaps) against {_pc(h['replace'])} on replaced or added content: "
            f"{verdict}. On spatial relations it scores {_pc(h['relation'])} (chance 50%).")
    return lines


def _comparisons(headlines: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Per split, which methods beat global cosine on attribute swaps and on hard swaps."""
    lines = []
    for split, name in SPLIT_NAMES.items():
        parts = []
        for key in ("attribute swap", "hard swap"):
            base = headlines["global"][split][key]
            others = ((h[split][key], m) for m, h in headlines.items() if m != "global")
            better = sorted(((v, m) for v, m in others if v > base), reverse=True)
            beaten = ", ".join(f"{m} ({_pc(v)})" for v, m in better) or "no method"
            parts.append(f"on {key}s, {beaten} beat{'s' if len(better) < 2 else ''} global cosine ({_pc(base)})")
        lines.append(f"- {name}: {'; '.join(parts)}.")
    return lines


def _sample_sizes(summary: dict[str, Any]) -> str:
    """How many items the hard-swap figures rest on, and the noise that comes with so few."""
    parts = []
    for split, name in SPLIT_NAMES.items():
        n = summary["world"].get(split, {}).get("swap_att_hard", 0)
        p = summary["results"]["global"][split]["hard swap"]
        error = 100 * np.sqrt(p * (1 - p) / n) if n else np.nan
        parts.append(f"{n} {name} (one standard error about {error:.0f} points)")
    return f"- Hard swaps are few: {' and '.join(parts)}; read their differences with that in mind."


def _pc(value: float) -> str:
    return f"{100 * value:.1f}%"


def write(out: str, summary: dict[str, Any], results: dict[str, dict[str, Any]], curves: dict[str, str],
          world_dir: str, plots: bool = True) -> None:
    with open(os.path.join(out, "report.json"), "w") as f:
        full = {m: {s: {k: v for k, v in r.items() if k != "item_scores"} for s, r in by.items()}
                for m, by in results.items()}
        json.dump({**summary, "reports": full}, f, indent=2, default=float)
    figures = _plots(out, summary["results"], results, curves, world_dir) if plots else []
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(summary, results, figures))


def markdown(summary: dict[str, Any], results: dict[str, dict[str, Any]], figures: list[str]) -> str:
    headlines = summary["results"]
    keys = ("attribute swap", "hard swap", "replace", "relation", "group")
    columns = [f"{SPLIT_NAMES[s]} {k}" for s in SPLIT_NAMES for k in keys]
    rows = {method: {f"{SPLIT_NAMES[s]} {k}": h[s].get(k) for s in SPLIT_NAMES for k in keys}
            for method, h in headlines.items()}
    for method, by_split in results.items():
        passes = by_split["test_id"].get("encoder_passes_per_image", 1.0)
        rows[method]["encoder passes / image"] = f"{passes:.1f}"
    world = summary["config"]["world"]
    lines = [
        "# vlcache demo: does global cosine inference fail where local methods hold?", "",
        f"World: {world['min_objects']}-{world['max_objects']} objects per scene, attributes "
        f"{', '.join(world['attributes']) or 'none'} (+ shape), {world['image_size']} px, relations "
        f"{'on' if world['relations'] else 'off'}, seed {world['seed']}; {world['n_train']} training scenes, "
        f"{world['n_test']} per test split. Encoder: `{summary['config']['pretrain']['model']}` pretrained from "
        "scratch with the CLIP loss (no hard negatives), frozen. Heads were trained on the cached tensors only.", "",
        "## What this run measured", "", *verdicts(headlines), _sample_sizes(summary), "",
        "## Accuracy (caption above its negative) and BiVLC group score, %", "",
        markdown_table(rows, [*columns, "encoder passes / image"]),
        "Attribute swap = mean of swap_att and swap_att_hard; hard swap = swap_att_hard alone (the two objects "
        "differ only in the swapped binding); replace = mean of replace_att and add_obj; relation = mean of "
        "swap_obj and replace_rel; group = BiVLC group score (both directions right, chance 1/6).", "",
    ]
    for split, name in SPLIT_NAMES.items():
        accuracy = {m: by[split].get("caption_accuracy", {}).get("by_subset", {}) for m, by in results.items()}
        subsets = sorted({k for by_subset in accuracy.values() for k in by_subset})
        table = {m: {k: by_subset.get(k) for k in subsets} for m, by_subset in accuracy.items()}
        lines += [f"### {name}: accuracy by subset, %", "", markdown_table(table, subsets)]
    lines += [f"![{os.path.splitext(os.path.basename(f))[0]}]({f})" for f in figures]
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings"].items())
    lines += ["", f"Run time: {summary['seconds'] / 60:.1f} min ({timings}).", ""]
    return "\n".join(lines)


SWEEP_KEYS = ("attribute swap", "hard swap", "swap group")


def write_sweep(out: str, points: list[dict[str, Any]]) -> None:
    """sweep.json, sweep.md and sweep.png: each method's swap scores against scene complexity."""
    import matplotlib

    matplotlib.use("Agg")
    from . import plots

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump(points, f, indent=2, default=float)
    figure = os.path.relpath(plots.sweep(os.path.join(out, "sweep.png"), points, SWEEP_KEYS), out)
    lines = ["# vlcache demo sweep: where does global cosine break?", "",
             "Each point is the demo at about half its size, one knob changed (see `sweep.json`).", ""]
    for split, name in SPLIT_NAMES.items():
        lines += [f"## {name}: global cosine against the best other method", "", _sweep_summary(points, split)]
    for split, name in SPLIT_NAMES.items():
        for key in SWEEP_KEYS:
            rows = {m: {p["label"]: p["results"][m][split].get(key) for p in points} for m in points[0]["results"]}
            lines += [f"## {name}: {key}, %", "", markdown_table(rows, [p["label"] for p in points])]
    lines += [f"![sweep]({figure})", ""]
    with open(os.path.join(out, "sweep.md"), "w") as f:
        f.write("\n".join(lines))


def _sweep_summary(points: list[dict[str, Any]], split: str) -> str:
    """Per point: how far global cosine trails on attribute swaps, and the best other method there."""
    rows = {}
    for p in points:
        g = p["results"]["global"][split]
        best = max((m for m in p["results"] if m != "global"), key=lambda m: p["results"][m][split]["attribute swap"])
        best_value = p["results"][best][split]["attribute swap"]
        hard = p.get("world", {}).get(split, {}).get("swap_att_hard")
        rows[p["label"]] = {"global attribute swap": g["attribute swap"], "global replace": g["replace"],
                            "gap, points": f"{100 * (g['replace'] - g['attribute swap']):.1f}",
                            "best other method": best, "its attribute swap": best_value,
                            "hard swaps (n)": "-" if hard is None else str(hard)}
    return markdown_table(rows, index_name="point")


def _plots(out: str, headlines, results, curves, world_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no screen
    from . import plots

    return [os.path.relpath(p, out) for p in (
        plots.bars_by_type(os.path.join(out, "by_type.png"), results),
        plots.training_curves(os.path.join(out, "training.png"), curves),
        plots.example_scenes(os.path.join(out, "examples.png"), results, world_dir),
    ) if p]
