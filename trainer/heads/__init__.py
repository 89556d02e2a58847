"""Alignment heads, one per file, behind `Head.score(images, texts, image_index, text_index)`."""

from __future__ import annotations

from typing import Any

from cache_schemas import VlcacheError

from .base import Dims, Head
from .global_cosine import GlobalCosine
from .global_mlp import GlobalMLP
from .maxsim import MaxSim
from .tflocal import TFLocal

HEADS: dict[str, type[Head]] = {h.name: h for h in (GlobalCosine, MaxSim, GlobalMLP, TFLocal)}


def build_head(name: str, dims: Dims, settings: dict[str, Any] | None = None) -> Head:
    """A head by name, its settings' defaults overridden by `settings` (checked: one-line errors)."""
    if name not in HEADS:
        raise VlcacheError(f"unknown head {name!r}; heads: {', '.join(HEADS)}")
    head = HEADS[name]
    return head(dims, head.Config.from_json(settings or {}))


__all__ = ["HEADS", "Dims", "Head", "build_head"]
