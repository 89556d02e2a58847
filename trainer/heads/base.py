"""The one interface every head implements: score batches of (image, text) pairs from cached tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cache_schemas import EmbeddingSpace


@dataclass(frozen=True)
class Dims:
    """What a head needs to know of the space it reads."""

    patches: int
    patch_dim: int  # image token width as stored (projected or not)
    text_dim: int  # text token width as stored
    embed_dim: int  # global embedding width
    context_length: int

    @classmethod
    def of(cls, space: EmbeddingSpace) -> Dims:
        return cls(space.dims["patches"], space.token_dim, space.text_token_dim, space.dims["embed_dim"],
                   space.context_length)


class Head(nn.Module):
    """Scores (image, text) pairs. `images` and `texts` are a batch's tables (see trainer.data.Batch);
    a pair is an index into each. Higher is a better match."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]  # inputs read from the store: image.patches, image.global, text.tokens, ...
    pairwise: ClassVar[bool] = True  # cost grows with the number of pairs: retrieval re-ranks a global top K

    def __init__(self, dims: Dims, **config: Any):
        super().__init__()
        self.dims = dims
        self.config = config

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def score(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor],
              image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """(P,) scores of the pairs (images[image_index[p]], texts[text_index[p]])."""
        raise NotImplementedError

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (N, L) over positions where mask (N, L) is true."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
