"""`vlcache plot`: the figures of a training run (its loss per step against the chance loss ln K, and
its periodic evaluations) or of an evaluation report (accuracy per subset against chance). The
drawing is workflows/plots.py's, the same functions the demo's report uses."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from cache_schemas import VlcacheError
from cache_schemas.location import Location

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

    out = out or default_out(path)
    if kind == "report":
        report = read_report(file)
        Location(out).check_creatable("the figures' folder")  # all read and checked before any write
        os.makedirs(out, exist_ok=True)
        return [plots.report_bars(os.path.join(out, "accuracy.png"), report)]
    head = _head(file)
    reports = {os.path.basename(os.path.dirname(r)): read_report(r)  # what the run's last eval wrote
               for r in sorted(glob.glob(os.path.join(folder, "eval", "*", REPORT)))}
    Location(out).check_creatable("the figures' folder")
    os.makedirs(out, exist_ok=True)
    written = [plots.training_curves(os.path.join(out, "training.png"), {head: [file]}, evals=True)]
    for name, report in reports.items():
        written.append(plots.report_bars(os.path.join(out, f"accuracy-{name}.png"), report))
    return written


def default_out(path: str) -> str:
    """Where the PNGs go without --out: RUN/plots/, or the report's own folder."""
    kind, file = what(path)
    folder = os.path.dirname(file) or "."
    return os.path.join(folder, "plots") if kind == "run" else folder


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
    """A report as `vlcache eval` writes it, checked down to every number the bars draw."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError: a binary file
        raise VlcacheError(f"{path} cannot be read as a report ({type(exc).__name__})") from None
    if not isinstance(report, dict) or not {"head", "dataset"} <= set(report):
        raise VlcacheError(f"{path} is not an evaluation report (no head and dataset in it)")
    wrong = _report_fault(report)
    if wrong:
        raise VlcacheError(f"{path} is not an evaluation report as vlcache eval writes it: {wrong}")
    return report


def _report_fault(report: dict[str, Any]) -> str | None:
    """What in a report the figure cannot draw, or None."""
    for key in ("head", "dataset"):
        if not isinstance(report[key], str):
            return f"{key} is {_kind(report[key])}, not a text"
    acc, bivlc = report.get("caption_accuracy"), report.get("bivlc")
    if acc is None and bivlc is None:
        return "it has neither caption_accuracy nor bivlc"
    if acc is not None:
        if not isinstance(acc, dict) or not _numbers(acc.get("by_subset")) or not _count(acc.get("items")):
            return "caption_accuracy needs by_subset (subset: accuracy) and items"
        chance = acc.get("chance_by_subset")
        if chance is not None and not (_numbers(chance) and set(acc["by_subset"]) <= set(chance)):
            return "caption_accuracy.chance_by_subset needs a number for every subset"
    if bivlc is not None:
        if not isinstance(bivlc, dict) or not _count(bivlc.get("items")):
            return "bivlc needs items, i2t, t2i and group"
        for name in ("i2t", "t2i", "group"):
            if not isinstance(bivlc.get(name), dict) or not _numbers(bivlc[name].get("by_type")):
                return f"bivlc.{name} needs by_type (type: score)"
    if not isinstance(report.get("training") or {}, dict):
        return "training is not an object"
    return None


def _numbers(values: object) -> bool:
    """A non-empty {name: number} mapping."""
    return isinstance(values, dict) and bool(values) and all(_number(v) for v in values.values())


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _head(log: str) -> str:
    """The run's head, from the log's start record; refuses a log with no training step in it, or with
    records a training run never writes."""
    from .plots import read_log

    records = read_log(log)
    start = next((r for r in records if isinstance(r, dict) and r.get("event") == "start"), None)
    if start is None:
        raise VlcacheError(f"{log} is not a training log (no start record, as vlcache train writes)")
    for n, record in enumerate(records, 1):
        wrong = _record_fault(record)
        if wrong:
            raise VlcacheError(f"{log} is not a training log as vlcache train writes it: record {n} {wrong}")
    if not any("loss" in r for r in records):
        raise VlcacheError(f"{log} has no training step logged yet")
    return str(start.get("head", "head"))


def _record_fault(record: object) -> str | None:
    """What in one log record the curves cannot draw, or None."""
    if not isinstance(record, dict):
        return f"is {_kind(record)}, not an object"
    if ("loss" in record or "eval" in record) and not _count(record.get("step")):
        return "has no step (a whole number)"
    for key in ("loss", "chance_loss"):
        if key in record and not _number(record[key]):
            return f"has a {key} of {record[key]!r}, not a number"
    evals = record.get("eval")
    if evals is not None and not (isinstance(evals, dict)
                                  and all(isinstance(h, dict) and all(_number(v) for v in h.values())
                                          for h in evals.values())):
        return "has an eval that is not {dataset: {metric: number}}"
    if "health" in record and not isinstance(record["health"], (dict, type(None))):
        return "has a health that is not an object"
    return None
