"""Run configuration. Head settings live with each head (`Head.Config`: one source, with their
defaults and ranges); per-head training defaults in trainer/configs/<head>.json; a user's JSON file
of the same shape ({"head": {...}, "train": {...}}) overrides both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_schemas import VlcacheError

from .settings import Settings, setting

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class TrainConfig(Settings):
    KIND = "train setting"

    steps: int = setting(2000, 1)
    batch_size: int = setting(64, 2)  # in-batch negatives need a second item
    lr: float = setting(3e-4, 0, open_low=True)
    weight_decay: float = setting(0.05, 0)
    warmup_steps: int = setting(100, 0)
    grad_clip: float = setting(1.0, 0, open_low=True)
    in_batch_negatives: int = setting(8, 0)  # other items' captions (and images) scored with each query
    hard_negatives: bool = True  # refuse a dataset without negative captions
    shuffle_buffer: int = setting(2048, 1)  # items
    resident_mb: float = setting(4096, 0)  # a dataset whose rows fit is read once and kept on the device; 0: stream
    eval_every: int = setting(500, 1)
    checkpoint_every: int = setting(500, 1)
    log_every: int = setting(10, 1)
    retrieval_k: int = setting(16, 0)  # candidates a pairwise head re-ranks in retrieval; 0: no retrieval
    seed: int = setting(0, 0)


def load_config(head: str, path: str | None = None) -> tuple[dict[str, Any], TrainConfig]:
    """The user's head settings (the head fills in its defaults) and the run's TrainConfig."""
    defaults = read_config(CONFIG_DIR / f"{head}.json") if (CONFIG_DIR / f"{head}.json").exists() else {}
    user = read_config(Path(path)) if path else {}
    unknown = set(user) - {"head", "train"}
    if unknown:
        raise VlcacheError(f"config {path} has unknown sections {sorted(unknown)}; expected 'head' and 'train'")
    for section in ("head", "train"):
        if not isinstance(user.get(section, {}), dict):
            raise VlcacheError(f"config {path}: {section!r} must be a JSON object of settings")
    train = TrainConfig.from_json({**defaults.get("train", {}), **user.get("train", {})})
    return dict(user.get("head", {})), train


def read_config(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file, or a one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise VlcacheError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise VlcacheError(f"config file {path} is not UTF-8 text (JSON must be)") from None
    except json.JSONDecodeError as exc:
        raise VlcacheError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VlcacheError(f"config file {path} must hold a JSON object")
    return data
