"""`maxsim`: late interaction. Each text token's best cosine over the image's patches, averaged over
the caption's real tokens. Parameter-free (tokens must share a space, e.g. extracted --projected) or
with learnable projections of both sides into a common space."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cache_schemas import VlcacheError

from ..settings import Settings, setting
from .base import Dims, Head, gather, masked_mean


class MaxSim(Head):
    name = "maxsim"
    needs = frozenset({"image.patches", "text.tokens"})
    aligns = True

    @dataclass(frozen=True)
    class Config(Settings):
        KIND = "maxsim setting"
        learnable: bool = True
        dim: int = setting(256, 1)

    def __init__(self, dims: Dims, config: Config | None = None):
        super().__init__(dims, config)
        if self.config.learnable:
            self.image_proj = nn.Linear(dims.patch_dim, self.config.dim, bias=False)
            self.text_proj = nn.Linear(dims.text_dim, self.config.dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        elif dims.patch_dim != dims.text_dim:
            raise VlcacheError(
                f"parameter-free maxsim needs image and text tokens of one width (here {dims.patch_dim} and "
                f"{dims.text_dim}): extract with --projected, or train maxsim with learnable projections"
            )

    def score(self, images, texts, image_index, text_index) -> torch.Tensor:
        sim = self.alignment(images, texts, image_index, text_index)  # (pairs, L, P)
        score = masked_mean(sim.amax(dim=-1), gather(texts["mask"], text_index))
        return score * self.logit_scale.exp() if self.config.learnable else score

    def alignment(self, images, texts, image_index, text_index) -> torch.Tensor:
        """(pairs, L, P): the cosine of each caption token with each patch (after the learned
        projections, when there are some); the score is each real token's best one, averaged."""
        patches, tokens = images["patches"], texts["tokens"]
        if self.config.learnable:
            patches, tokens = self.image_proj(patches), self.text_proj(tokens)
        patches, tokens = F.normalize(patches, dim=-1), F.normalize(tokens, dim=-1)
        return gather(tokens, text_index) @ gather(patches.transpose(1, 2), image_index)
