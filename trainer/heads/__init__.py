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


def build_head(name: str, dims: Dims, config: dict[str, Any] | None = None) -> Head:
    if name not in HEADS:
        raise VlcacheError(f"unknown head {name!r}; heads: {', '.join(HEADS)}")
    try:
        return HEADS[name](dims, **(config or {}))
    except TypeError as exc:  # an unknown key in a user's config file
        raise VlcacheError(f"bad config for head {name}: {exc}") from None


__all__ = ["HEADS", "Dims", "Head", "build_head"]
