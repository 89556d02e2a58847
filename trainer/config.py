"""Run configuration: per-head defaults in trainer/configs/<head>.json, overridden by a user's JSON
file of the same shape ({"head": {...}, "train": {...}})."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cache_schemas import VlcacheError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    in_batch_negatives: int = 8  # other items' captions (and images) scored with each query
    hard_negatives: bool = True  # refuse a dataset without negative captions
    shuffle_buffer: int = 2048  # items
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    retrieval_k: int = 16  # candidates a pairwise head re-ranks in retrieval
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value, expected = getattr(self, f.name), type(f.default)
            ok = isinstance(value, bool) if expected is bool else (
                isinstance(value, (int, float) if expected is float else int) and not isinstance(value, bool))
            if not ok:
                raise VlcacheError(f"train setting {f.name} must be {expected.__name__}, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_config(head: str, path: str | None = None) -> tuple[dict[str, Any], TrainConfig]:
    defaults = _read(CONFIG_DIR / f"{head}.json") if (CONFIG_DIR / f"{head}.json").exists() else {}
    user = _read(Path(path)) if path else {}
    unknown = set(user) - {"head", "train"}
    if unknown:
        raise VlcacheError(f"config {path} has unknown sections {sorted(unknown)}; expected 'head' and 'train'")
    train = {**defaults.get("train", {}), **user.get("train", {})}
    known = {f.name for f in fields(TrainConfig)}
    if set(train) - known:
        raise VlcacheError(f"unknown train settings {sorted(set(train) - known)}; known: {sorted(known)}")
    return {**defaults.get("head", {}), **user.get("head", {})}, TrainConfig(**train)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise VlcacheError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise VlcacheError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VlcacheError(f"config file {path} must hold a JSON object")
    return data
