"""`tflocal`: a light transformer that aligns a caption's tokens with an image's regions over frozen
patch and token embeddings, and scores the pair by how well every token finds its region.

    patches ─► proj + pos ─► image layers (regions in context)      once per image of the batch
    tokens  ─► proj + pos ─► text layers (segments in context)      once per caption of the batch
    per pair: pair layers (each token attends to the image's regions)
              score = scale * Σ_l w_l · softmax-weighted best cosine of token l over the regions

The alignment is the head's structure, not something a score token must discover: the score is a
learnable, soft late interaction (FILIP / ColBERT MaxSim) from step 0, so every candidate gets a
different score and the loss has a useful gradient at once. Context layers on each side let a
token carry its phrase and a patch its object; pair layers let tokens read the image before they
are matched. Per-pair cost is the pair layers and an (L x P) similarity; everything else is paid
once per image and once per caption. `pool` averages pool x pool patches first (large grids)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cache_schemas import VlcacheError

from ..settings import Settings, setting
from .base import Dims, Head, gather


class TFLocal(Head):
    name = "tflocal"
    needs = frozenset({"image.patches", "text.tokens"})
    aligns = True

    @dataclass(frozen=True)
    class Config(Settings):
        KIND = "tflocal setting"
        width: int = setting(128, 1)
        layers: int = setting(1, 0)  # context layers on each side
        pair_layers: int = setting(1, 0)  # cross-attention layers per pair
        heads: int = setting(4, 1)
        mlp_ratio: float = setting(4.0, 0, open_low=True)
        dropout: float = setting(0.0, 0, 0.9)
        pool: int = setting(1, 1)

    def __init__(self, dims: Dims, config: Config | None = None):
        super().__init__(dims, config)
        c = self.config
        width, heads, mlp_ratio, dropout, pool = c.width, c.heads, c.mlp_ratio, c.dropout, c.pool
        if width % heads:
            raise VlcacheError(f"tflocal width {width} must be a multiple of heads {heads}")
        self.grid = math.isqrt(dims.patches)
        if self.grid ** 2 != dims.patches or self.grid % pool:
            raise VlcacheError(f"tflocal pool {pool} needs a square patch grid divisible by it; the space has "
                               f"{dims.patches} patches")
        self.image_in = nn.Linear(dims.patch_dim, width)
        self.text_in = nn.Linear(dims.text_dim, width)
        self.image_pos = nn.Parameter(torch.randn(dims.patches // pool ** 2, width) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(dims.context_length, width) * 0.02)
        self.image_layers = _encoder(width, heads, mlp_ratio, dropout, c.layers)
        self.text_layers = _encoder(width, heads, mlp_ratio, dropout, c.layers)
        self.pair_layers = nn.ModuleList(CrossBlock(width, heads, mlp_ratio, dropout) for _ in range(c.pair_layers))
        self.image_norm, self.text_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key = nn.Linear(width, width), nn.Linear(width, width)
        self.token_weight = nn.Linear(width, 1)
        self.sharpness = nn.Parameter(torch.tensor(math.log(10.0)))  # soft max over regions
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        _zero_residual_branches(self)

    def score(self, images, texts, image_index, text_index) -> torch.Tensor:
        sim, weights, t, m = self._match(images, texts, image_index, text_index)
        best = (weights * sim).sum(-1)  # (N, L): a soft max over regions
        weight = torch.sigmoid(self.token_weight(t).squeeze(-1)) * m
        return self.logit_scale.exp() * (best * weight).sum(-1) / weight.sum(-1).clamp(min=1e-6)

    def alignment(self, images, texts, image_index, text_index) -> torch.Tensor:
        """(N, L, R): the soft late interaction's weights, the softmax over the image's regions with which
        each token's best cosine is taken (each row sums to 1). R = patches / pool², a row-major grid."""
        return self._match(images, texts, image_index, text_index)[1]

    def _match(self, images, texts, image_index, text_index):
        """The pairs' token-region cosines (N, L, R), their softmax weights (N, L, R), the pairs' tokens
        after the pair layers (N, L, w) and their mask (N, L)."""
        regions = self.image_norm(self.image_layers(self.image_in(self._pooled(images["patches"])) + self.image_pos))
        mask = texts["mask"]  # (T, L)
        length = mask.shape[1]
        words = self.text_layers(self.text_in(texts["tokens"]) + self.text_pos[:length], src_key_padding_mask=~mask)
        words = self.text_norm(words)  # (T, L, w)
        t, m = words[text_index], mask[text_index]  # the pairs' tokens (N, L, w)
        for block in self.pair_layers:
            t = block(t, regions, image_index)
        key = gather(F.normalize(self.key(regions), dim=-1).transpose(1, 2), image_index)  # (N, w, P)
        sim = F.normalize(self.query(t), dim=-1) @ key  # (N, L, P)
        return sim, sim.mul(self.sharpness.exp()).softmax(-1), t, m

    def _pooled(self, patches: torch.Tensor) -> torch.Tensor:
        """(I, P, D) -> (I, P / pool^2, D), averaging pool x pool cells of the row-major patch grid."""
        pool = self.config.pool
        if pool == 1:
            return patches
        n, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(n, d, self.grid, self.grid)
        return F.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)


class CrossBlock(nn.Module):
    """Pre-norm: tokens attend to their image's regions, then an MLP. Keys and values are computed
    once per image (`regions`), then gathered per pair."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.head_dim, self.dropout = width // heads, dropout
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.out = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, tokens: torch.Tensor, regions: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """tokens (N, L, w) of the pairs, regions (I, P, w) of the batch's images, image_index (N,)."""
        k, v = self._split(self.kv(self.norm_kv(regions))).chunk(2, dim=1)  # (I, h, P, d) each
        q = self._split(self.q(self.norm_q(tokens)))  # (N, h, L, d)
        attended = F.scaled_dot_product_attention(q, gather(k, image_index), gather(v, image_index),
                                                  dropout_p=self.dropout if self.training else 0.0)
        tokens = tokens + self.out(attended.transpose(1, 2).flatten(2))
        return tokens + self.mlp(self.norm_mlp(tokens))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, m * width) -> (B, m * heads, S, head_dim)."""
        return x.view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)


def _zero_residual_branches(module: nn.Module) -> None:
    """Zero the last linear layer of every residual branch (attention output, MLP output): each layer
    starts as the identity, so the head starts as a learnable soft MaxSim of the projected tokens and
    its layers grow in from there."""
    for layer in module.modules():
        if isinstance(layer, nn.TransformerEncoderLayer):
            last = (layer.self_attn.out_proj, layer.linear2)
        elif isinstance(layer, CrossBlock):
            last = (layer.out, layer.mlp[-1])
        else:
            continue
        for linear in last:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)


def _encoder(width: int, heads: int, mlp_ratio: float, dropout: float, layers: int) -> nn.Module:
    if layers == 0:
        return _Identity()
    layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x
