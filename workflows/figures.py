"""`vlcache plot`: the figures of a training run (its loss per step against the chance loss ln K, and
its periodic evaluations) or of an evaluation report (accuracy per subset against chance). The
drawing is workflows/plots.py's, the same functions the demo's report uses."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from cache_schemas import VlcacheError

LOG = "log.jsonl"
REPORT = "report.json"


def plot(path: str, out: str | None = None) -> list[str]:
    """The PNGs written for `path` (a run folder or its log.jsonl; a report folder or its report.json),
    in `out` (default: RUN/plots/, or the report's own folder)."""
    kind, file = what(path)
    folder = os.path.dirname(file) or "."
    import matplotlib

    matplotlib.use("Agg")  # no screen
    from . import plots

    out = out or (os.path.join(folder, "plots") if kind == "run" else folder)
    if kind == "report":
        report = read_report(file)
        os.makedirs(out, exist_ok=True)
        return [plots.report_bars(os.path.join(out, "accuracy.png"), report)]
    head = _head(file)
    os.makedirs(out, exist_ok=True)
    written = [plots.training_curves(os.path.join(out, "training.png"), {head: [file]}, evals=True)]
    for report in sorted(glob.glob(os.path.join(folder, "eval", "*", REPORT))):  # what the run's last eval wrote
        name = os.path.basename(os.path.dirname(report))
        written.append(plots.report_bars(os.path.join(out, f"accuracy-{name}.png"), read_report(report)))
    return written


def what(path: str) -> tuple[str, str]:
    """("run", its log) or ("report", its JSON); one line naming what was expected otherwise."""
    if not os.path.exists(path):
        raise VlcacheError(f"{path} does not exist")
    if os.path.isfile(path) and path.endswith((".jsonl", ".json")):
        return ("run" if path.endswith(".jsonl") else "report"), path
    for kind, name in (("run", LOG), ("report", REPORT)):
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, name)):
            return kind, os.path.join(path, name)
    raise VlcacheError(f"{path} is neither a training run (a folder with {LOG}, as vlcache train writes) nor an "
                       f"evaluation report ({REPORT} or its folder, as vlcache eval writes)")


def read_report(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise VlcacheError(f"{path} cannot be read as a report ({type(exc).__name__})") from None
    if not isinstance(report, dict) or not {"head", "dataset"} <= set(report):
        raise VlcacheError(f"{path} is not an evaluation report (no head and dataset in it)")
    return report


def _head(log: str) -> str:
    """The run's head, from the log's start record; refuses a log with no training step in it."""
    from .plots import read_log

    records = read_log(log)
    start = next((r for r in records if isinstance(r, dict) and r.get("event") == "start"), None)
    if start is None:
        raise VlcacheError(f"{log} is not a training log (no start record, as vlcache train writes)")
    if not any("loss" in r for r in records):
        raise VlcacheError(f"{log} has no training step logged yet")
    return start.get("head", "head")
