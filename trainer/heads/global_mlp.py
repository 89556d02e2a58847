"""`global-mlp`: a trainable head on the global embeddings only, the "more capacity alone" control.
It starts as the scaled global cosine (its MLP's last layer is zero) and learns a correction from
(image * text, image, text)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import Settings, setting
from .base import Dims, Head


class GlobalMLP(Head):
    name = "global-mlp"
    needs = frozenset({"image.global", "text.global"})

    @dataclass(frozen=True)
    class Config(Settings):
        KIND = "global-mlp setting"
        hidden: int = setting(1024, 1)
        layers: int = setting(2, 1)
        dropout: float = setting(0.1, 0, 0.9)

    def __init__(self, dims: Dims, config: Config | None = None):
        super().__init__(dims, config)
        c = self.config
        blocks: list[nn.Module] = []
        width = 3 * dims.embed_dim
        for _ in range(c.layers):
            blocks += [nn.Linear(width, c.hidden), nn.GELU(), nn.Dropout(c.dropout)]
            width = c.hidden
        last = nn.Linear(width, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*blocks, last)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def score(self, images, texts, image_index, text_index) -> torch.Tensor:
        image = F.normalize(images["global"][image_index], dim=-1)  # (P, E)
        text = F.normalize(texts["global"][text_index], dim=-1)
        cosine = (image * text).sum(-1)
        return self.logit_scale.exp() * cosine + self.mlp(torch.cat([image * text, image, text], -1)).squeeze(-1)
