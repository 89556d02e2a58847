"""The one interface every head implements: score batches of (image, text) pairs from cached tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cache_schemas import EmbeddingSpace, VlcacheError

from ..settings import Settings


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
    a pair is an index into each. Higher is a better match. A head's settings, their defaults and
    ranges, are its nested `Config` (the one place they are written)."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]  # inputs read from the store: image.patches, image.global, text.tokens, ...
    pairwise: ClassVar[bool] = True  # cost grows with the number of pairs: retrieval re-ranks a global top K
    trains: ClassVar[bool] = True  # has parameters to train (at its default settings)
    aligns: ClassVar[bool] = False  # scores through a token x region alignment (`alignment`)

    @dataclass(frozen=True)
    class Config(Settings):
        pass

    def __init__(self, dims: Dims, config: Settings | None = None):
        super().__init__()
        self.dims = dims
        self.config = config if config is not None else self.Config()

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def score(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor],
              image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """(P,) scores of the pairs (images[image_index[p]], texts[text_index[p]])."""
        raise NotImplementedError

    def alignment(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor],
                  image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """(P, L, R): for each pair, how each of its caption's L token positions aligns with the image's
        R regions (a row-major square grid of patches), exactly as `score` uses it; padded positions
        (texts["mask"] false) hold no meaning. Only heads that score through such an alignment
        (`aligns`) have one."""
        raise VlcacheError(f"head {self.name} does not align caption tokens with image patches, so it has no "
                           "alignment map to draw; maxsim and tflocal do")

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (N, L) over positions where mask (N, L) is true."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along the first axis, as an embedding lookup: per-image (or per-caption) tensors
    gathered for a batch's pairs. Its backward is several times faster on CPU than indexing's."""
    return F.embedding(index, x.reshape(len(x), -1)).view(len(index), *x.shape[1:])
