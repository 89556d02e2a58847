"""`maxsim`: late interaction. Each text token's best cosine over the image's patches, averaged over
the caption's real tokens. Parameter-free (tokens must share a space, e.g. extracted --projected) or
with learnable projections of both sides into a common space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cache_schemas import VlcacheError

from .base import Dims, Head, masked_mean


class MaxSim(Head):
    name = "maxsim"
    needs = frozenset({"image.patches", "text.tokens"})

    def __init__(self, dims: Dims, learnable: bool = True, dim: int = 256):
        super().__init__(dims, learnable=learnable, dim=dim)
        if learnable:
            self.image_proj = nn.Linear(dims.patch_dim, dim, bias=False)
            self.text_proj = nn.Linear(dims.text_dim, dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        elif dims.patch_dim != dims.text_dim:
            raise VlcacheError(
                f"parameter-free maxsim needs image and text tokens of one width (here {dims.patch_dim} and "
                f"{dims.text_dim}): extract with --projected, or train maxsim with learnable projections"
            )

    def score(self, images, texts, image_index, text_index) -> torch.Tensor:
        patches, tokens = images["patches"], texts["tokens"]
        if self.config["learnable"]:
            patches, tokens = self.image_proj(patches), self.text_proj(tokens)
        patches, tokens = F.normalize(patches, dim=-1), F.normalize(tokens, dim=-1)
        sim = torch.einsum("npd,nld->nlp", patches[image_index], tokens[text_index])  # (pairs, L, P)
        score = masked_mean(sim.amax(dim=-1), texts["mask"][text_index])
        return score * self.logit_scale.exp() if self.config["learnable"] else score
