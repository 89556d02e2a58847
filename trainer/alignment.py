"""A head's token-patch alignment for chosen items of a dataset: what `vlcache align` draws. Reads the
store only (no encoder): the item's cached patches and the caption's cached tokens go through the
head's own `alignment`, the same computation its score is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError

from .heads import HEADS, Head


@dataclass(frozen=True)
class CaptionMaps:
    role: str  # "caption", or "negative 1", "negative 2", ...
    text: str
    segments: list[str] | None  # the caption's parts, where the dataset names them
    maps: np.ndarray  # (n_tokens, grid, grid): each stored token's alignment over the patch grid


@dataclass(frozen=True)
class ItemMaps:
    item_id: str
    image_uri: str
    captions: list[CaptionMaps]


def item_maps(space: SpaceEmbeddings, dataset: DatasetTables, head: Head, item_ids: list[str],
              negatives: bool = False) -> list[ItemMaps]:
    """Each item's caption (and, with `negatives`, its negative captions) aligned with the item's image."""
    if not head.aligns:
        raise VlcacheError(f"head {head.name} does not align caption tokens with image patches, so there is no "
                           f"map to draw; heads that do: {', '.join(n for n, h in HEADS.items() if h.aligns)}")
    rows = _item_rows(dataset, item_ids)
    images, texts = _by_hash(dataset.images, "uri"), _by_hash(dataset.texts, "text")
    segments = _by_hash(dataset.texts, "segments")
    head.eval()
    out = []
    for item in rows:
        hashes = [item["caption"]] + (item["negative_captions"] if negatives else [])
        roles = ["caption"] + [f"negative {i}" for i in range(1, len(hashes))]
        maps = _maps(space, head, item, hashes)
        out.append(ItemMaps(item["item_id"], images[item["image"]],
                            [CaptionMaps(r, texts[h], segments[h], m) for r, h, m in zip(roles, hashes, maps)]))
    return out


def _item_rows(dataset: DatasetTables, item_ids: list[str]) -> list[dict]:
    by_id = {row["item_id"]: row for row in dataset.items.to_pylist()}
    unknown = [i for i in item_ids if i not in by_id]
    if unknown:
        some = ", ".join(list(by_id)[:3])
        raise VlcacheError(f"dataset {dataset.name} has no item {unknown[0]!r} (its item ids look like: {some}, ...)")
    return [by_id[i] for i in item_ids]


def _by_hash(table: pa.Table, column: str) -> dict[str, object]:
    return dict(zip(table["hash"].to_pylist(), table[column].to_pylist()))


def _maps(space: SpaceEmbeddings, head: Head, item: dict, text_hashes: list[str]) -> list[np.ndarray]:
    """(n_tokens, grid, grid) per text: the head's alignment of each with the item's image."""
    image_rows, text_rows = space.rows("images", [item["image"]]), space.rows("texts", text_hashes)
    if (image_rows < 0).any() or (text_rows < 0).any():
        raise VlcacheError(f"item {item['item_id']}'s image or captions are not in space {space.key}: "
                           "extract the dataset with this encoder first")
    tokens, mask = space.read_tokens_padded(text_rows)
    images = {"patches": torch.from_numpy(space.read("image_patches", image_rows)).float()}
    texts = {"tokens": torch.from_numpy(tokens).float(), "mask": torch.from_numpy(mask)}
    device = next(head.parameters(), torch.empty(0)).device
    with torch.no_grad():
        aligned = head.alignment({k: v.to(device) for k, v in images.items()},
                                 {k: v.to(device) for k, v in texts.items()},
                                 torch.zeros(len(text_rows), dtype=torch.long, device=device),
                                 torch.arange(len(text_rows), device=device)).float().cpu().numpy()
    grid = math.isqrt(aligned.shape[-1])
    if grid * grid != aligned.shape[-1]:
        raise VlcacheError(f"the head aligns tokens with {aligned.shape[-1]} regions, not a square grid: "
                           "there is no image layout to draw them on")
    return [a[:n].reshape(n, grid, grid) for a, n in zip(aligned, mask.sum(axis=1))]
