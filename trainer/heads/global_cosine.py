"""`global`: the zero-shot baseline. Cosine of the stored global embeddings; nothing to train."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Head


class GlobalCosine(Head):
    name = "global"
    needs = frozenset({"image.global", "text.global"})
    pairwise = False
    trains = False

    def score(self, images, texts, image_index, text_index) -> torch.Tensor:
        image = F.normalize(images["global"][image_index], dim=-1)  # (P, E)
        text = F.normalize(texts["global"][text_index], dim=-1)
        return (image * text).sum(-1)

    def matrix(self, images, texts) -> torch.Tensor:
        """(I, T) all pairs at once: the global cosine factorises."""
        return F.normalize(images["global"], dim=-1) @ F.normalize(texts["global"], dim=-1).T
