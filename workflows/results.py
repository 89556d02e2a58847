"""The demo's measurements: each method's reports per split and training seed, the few headline
numbers the study turns on, and their mean and standard error over seeds, compared by intervals
rather than single numbers.

A score's uncertainty has two parts: how much it moves between training seeds (the standard error
of the mean over seeds) and how few items it was measured on (binomial, p(1-p)/n). `Estimate.se`
combines both; a difference counts when it exceeds two standard errors of the difference. The
items are the same for every method, so treating the two errors as independent is conservative."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.health import Health

MARGIN = 2.0  # standard errors a difference must exceed to be stated as one
SPLIT_NAMES = {"test_id": "in-domain", "test_ood": "out-of-domain"}
# Each headline number, and the subsets (SugarCrepe-style names) it averages.
HEADLINE_SUBSETS: dict[str, tuple[str, ...]] = {
    "swap": ("swap_att", "swap_att_hard", "swap_obj"),  # SugarCrepe's SWAP: attributes and objects
    "attribute swap": ("swap_att", "swap_att_hard"),  # binding: the same words, other pairs
    "hard swap": ("swap_att_hard",),  # the two objects differ only in the swapped binding
    "replace": ("replace_att", "add_obj"),  # content: a word the scene does not support
    "relation": ("swap_obj", "replace_rel"),  # spatial relations, reversed or replaced
}


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The few numbers the study turns on, from one method's report on one split."""
    by_subset = report.get("caption_accuracy", {}).get("by_subset", {})
    out = {"all": by_subset.get("all", np.nan)}
    for key, subsets in HEADLINE_SUBSETS.items():
        values = [by_subset[n] for n in subsets if n in by_subset]
        out[key] = np.mean(values) if values else np.nan
    if "bivlc" in report:
        out["group"] = report["bivlc"]["group"]["by_type"].get("all", np.nan)
        out["swap group"] = report["bivlc"]["group"]["by_type"].get("swap", np.nan)
    return {k: float(v) for k, v in out.items()}


@dataclass(frozen=True)
class Estimate:
    mean: float
    se_seeds: float  # standard error of the mean over seeds (0 with one seed)
    seeds: int
    items: int  # items the score was measured on (0: unknown)

    @classmethod
    def of(cls, values: list[float], items: int = 0) -> Estimate:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, 0, items)
        spread = float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else 0.0
        return cls(float(np.mean(finite)), spread, len(finite), items)

    @property
    def se(self) -> float:
        """Seeds and item sampling together."""
        binomial = self.mean * (1 - self.mean) / self.items if self.items else 0.0
        return math.sqrt(self.se_seeds ** 2 + binomial)

    def text(self) -> str:
        """"72.4 ± 1.3" in percent: mean ± standard error over seeds."""
        if math.isnan(self.mean):
            return "-"
        return f"{100 * self.mean:.1f}" + (f" ± {100 * self.se_seeds:.1f}" if self.seeds > 1 else "")

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "se_seeds": self.se_seeds, "se": self.se, "seeds": self.seeds, "items": self.items}


def compare(a: Estimate, b: Estimate) -> str:
    """"above", "below" or "level with": a against b, by MARGIN standard errors of the difference."""
    if math.isnan(a.mean) or math.isnan(b.mean):
        return "not comparable with"
    difference, se = a.mean - b.mean, math.sqrt(a.se ** 2 + b.se ** 2)
    if difference > MARGIN * se:
        return "above"
    if difference < -MARGIN * se:
        return "below"
    return "level with"


def difference_text(a: Estimate, b: Estimate) -> str:
    """"+11.8 ± 2.3 points": the difference and its standard error."""
    return f"{100 * (a.mean - b.mean):+.1f} ± {100 * math.sqrt(a.se ** 2 + b.se ** 2):.1f} points"


class Results:
    """Reports by method and split, one per training seed (one for untrained methods), with the
    training logs and the test splits' subset counts (for the item-sampling error)."""

    def __init__(self, counts: dict[str, dict[str, int]]):
        self.counts = counts  # split -> subset -> items (workflows.world's counts)
        self.reports: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.logs: dict[str, list[str]] = {}

    def add(self, method: str, split: str, report: dict[str, Any], log: str | None = None) -> None:
        self.reports.setdefault(method, {}).setdefault(split, []).append(report)
        if log and log not in self.logs.setdefault(method, []):
            self.logs[method].append(log)

    @property
    def methods(self) -> list[str]:
        return list(self.reports)

    def estimate(self, method: str, split: str, key: str) -> Estimate:
        values = [headline(r)[key] for r in self.reports[method][split] if key in headline(r)]
        return Estimate.of(values, self.items(split, key))

    def items(self, split: str, key: str) -> int:
        counts = self.counts.get(split, {})
        if key in HEADLINE_SUBSETS:
            return sum(counts.get(s, 0) for s in HEADLINE_SUBSETS[key])
        return counts.get("total", 0)

    def at_chance(self, method: str) -> int:
        """How many of the method's training runs ended with the loss at chance."""
        runs = self.reports[method][next(iter(self.reports[method]))]
        return sum(Health(**r["training"]).at_chance for r in runs if r.get("training"))

    def trained(self, method: str) -> bool:
        return any(r.get("training") for by in self.reports[method].values() for r in by)

    def mean_by_subset(self, method: str, split: str) -> dict[str, float]:
        """Accuracy per subset, mean over seeds."""
        runs = [r.get("caption_accuracy", {}).get("by_subset", {}) for r in self.reports[method].get(split, [])]
        subsets = sorted({k for by_subset in runs for k in by_subset})
        return {k: float(np.mean([r[k] for r in runs if k in r])) for k in subsets}

    def headlines(self) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """Every method's headline estimates, as JSON."""
        keys = ("all", *HEADLINE_SUBSETS, "group", "swap group")
        return {m: {split: {k: self.estimate(m, split, k).to_json() for k in keys} for split in by}
                for m, by in self.reports.items()}
