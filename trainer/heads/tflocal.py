"""`tflocal`: a light transformer that reads an image's patch tokens and a caption's tokens together
and scores the pair (a cross-encoder over frozen embeddings).

Sequence per pair: [score token] + projected patches (+ position, + image modality) + projected
text tokens (+ position, + text modality). Pre-norm
encoder layers; the score token's output goes through a linear layer. About 11M parameters at the
defaults (width 384, 6 layers) for ViT-B-sized towers. `pool` averages pool x pool patches first: a
cross-encoder's cost grows with the square of its sequence, and neighbouring patches are redundant.
`use_global` adds the two global embeddings as one token each: a shortcut to the global cosine, off
by default so the head measures what the local tokens hold."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cache_schemas import VlcacheError

from .base import Dims, Head


class TFLocal(Head):
    name = "tflocal"
    needs = frozenset({"image.patches", "text.tokens", "image.global", "text.global"})

    def __init__(self, dims: Dims, width: int = 384, layers: int = 6, heads: int = 6, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, use_global: bool = False, pool: int = 1):
        super().__init__(dims, width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout,
                         use_global=use_global, pool=pool)
        if not use_global:  # read only what the head looks at
            self.needs = frozenset({"image.patches", "text.tokens"})
        self.grid = math.isqrt(dims.patches)
        if self.grid ** 2 != dims.patches or self.grid % pool:
            raise VlcacheError(f"tflocal pool {pool} needs a square patch grid divisible by it; the space has "
                               f"{dims.patches} patches")
        self.image_proj = nn.Linear(dims.patch_dim, width)
        self.text_proj = nn.Linear(dims.text_dim, width)
        self.image_pos = nn.Parameter(torch.randn(dims.patches // pool ** 2, width) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(dims.context_length, width) * 0.02)
        self.modality = nn.Parameter(torch.randn(4, width) * 0.02)  # image, text, image global, text global
        self.score_token = nn.Parameter(torch.randn(width) * 0.02)
        if use_global:
            self.image_global_proj = nn.Linear(dims.embed_dim, width)
            self.text_global_proj = nn.Linear(dims.embed_dim, width)
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def score(self, images, texts, image_index, text_index) -> torch.Tensor:
        # Project each table once, then gather the pairs: a batch's pairs share images and captions.
        patches = self.image_proj(self._pooled(images["patches"])) + self.image_pos + self.modality[0]  # (I, P', w)
        length = texts["tokens"].shape[1]
        tokens = self.text_proj(texts["tokens"]) + self.text_pos[:length] + self.modality[1]  # (T, L, w)
        n = len(image_index)
        parts = [self.score_token.expand(n, 1, -1), patches[image_index], tokens[text_index]]
        keep = [torch.ones(n, 1 + patches.shape[1], dtype=torch.bool, device=patches.device),
                texts["mask"][text_index]]
        if self.config["use_global"]:
            image_global = self.image_global_proj(images["global"]) + self.modality[2]  # (I, w)
            text_global = self.text_global_proj(texts["global"]) + self.modality[3]
            parts += [image_global[image_index, None], text_global[text_index, None]]
            keep.append(torch.ones(n, 2, dtype=torch.bool, device=patches.device))
        sequence = torch.cat(parts, dim=1)  # (pairs, 1 + P + L [+ 2], w)
        hidden = self.encoder(sequence, src_key_padding_mask=~torch.cat(keep, dim=1))
        return self.out(self.norm(hidden[:, 0])).squeeze(-1)

    def _pooled(self, patches: torch.Tensor) -> torch.Tensor:
        """(I, P, D) -> (I, P / pool^2, D), averaging pool x pool cells of the row-major patch grid."""
        pool = self.config["pool"]
        if pool == 1:
            return patches
        n, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(n, d, self.grid, self.grid)
        return F.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)
