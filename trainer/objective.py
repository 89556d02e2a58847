"""The training objective: for each image, cross-entropy over its caption, its hard negative
captions and a few in-batch captions; where negative images exist, the symmetric text-to-image term
(and the negative image against the two captions, BiVLC-style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Batch
from .heads import Head


@dataclass(frozen=True)
class Groups:
    """Scoring groups: row g scores pairs (image[g, c], text[g, c]); column 0 is the right answer."""

    image: torch.Tensor  # (G, C) indices into the batch's images
    text: torch.Tensor  # (G, C) indices into the batch's texts
    valid: torch.Tensor  # (G, C) bool

    def to(self, device: torch.device) -> Groups:
        return Groups(self.image.to(device), self.text.to(device), self.valid.to(device))


def groups(batch: Batch, in_batch: int, generator: torch.Generator) -> Groups:
    """The groups of a batch still on the CPU; `in_batch` captions (and images) of other items per query."""
    b = len(batch.examples)
    items = torch.arange(b)
    image_rows, text_rows = batch.image_rows[:b], batch.text_rows[batch.positive]
    # In-batch candidates: other items whose image and caption both differ from this item's.
    allowed = (image_rows[:, None] != image_rows[None, :]) & (text_rows[:, None] != text_rows[None, :])
    others = _sample(allowed, in_batch, generator)  # (B, M) item indices, -1 = none
    texts = torch.cat([batch.positive[:, None], batch.negatives, _take(batch.positive, others)], 1)
    i2t = Groups(items[:, None].expand_as(texts), texts, texts >= 0)
    out = [i2t]
    has_negative_image = batch.negative_images[:, 0] >= 0
    if has_negative_image.any():
        n = has_negative_image
        images = torch.cat([items[:, None], batch.negative_images, _take(items, others)], 1)[n]
        out.append(Groups(images, batch.positive[n, None].expand_as(images), images >= 0))
        # The negative image is the right answer for its own caption, the negative caption.
        mirrored = torch.stack([batch.negatives[n, 0], batch.positive[n]], 1)
        image = batch.negative_images[n, :1].expand_as(mirrored)
        out.append(Groups(image, mirrored, mirrored >= 0))
    return _concat(out)


def loss(head: Head, batch: Batch, g: Groups) -> torch.Tensor:
    """Mean cross-entropy of the groups (built on the CPU by `groups`, moved to the batch's device)."""
    return group_loss(head.score(batch.images, batch.texts, g.image[g.valid], g.text[g.valid]), g)


def group_loss(scores: torch.Tensor, g: Groups) -> torch.Tensor:
    """Mean cross-entropy of the groups, given the scores of their valid pairs (in g.valid's order):
    the one loss heads and fine-tuned encoders (pipeline/finetune.py) train on."""
    logits = torch.full(g.valid.shape, float("-inf"), device=scores.device, dtype=scores.dtype)
    logits[g.valid] = scores
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def chance_loss(g: Groups) -> float:
    """The loss of a head that scores every candidate alike: the mean over groups of ln(candidates)."""
    return float(torch.log(g.valid.sum(1).clamp(min=1).float()).mean())


def _sample(allowed: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Up to m allowed columns per row, at random; -1 where fewer are allowed."""
    if m <= 0:
        return torch.empty(len(allowed), 0, dtype=torch.long)
    keys = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1.0)
    values, index = keys.topk(min(m, allowed.shape[1]), dim=1)
    return index.masked_fill(values < 0, -1)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] with -1 kept as -1."""
    return torch.where(index >= 0, values[index.clamp(min=0)], -1)


def _concat(parts: list[Groups]) -> Groups:
    width = max(p.image.shape[1] for p in parts)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[1]), value=value)

    return Groups(torch.cat([pad(p.image, 0) for p in parts]), torch.cat([pad(p.text, 0) for p in parts]),
                  torch.cat([pad(p.valid, False) for p in parts]))
