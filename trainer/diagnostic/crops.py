"""Region embeddings from crops that the image tower encodes one by one: the costly region source
of the diagnostic (one encoder pass per region), next to the free regions pooled from cached patch
features (regions.py). The one place in the trainer that runs an encoder: the research's original
diagnostic is defined by it.

Two crop styles: `canvas` keeps each box in place on a blank canvas at the original scale (what
worked in the research's scratch experiments); `resize` stretches the box to the full input, the
classic crop, which shows the tower a scale it never saw in training."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError
from pipeline.encoders import Encoder, load_encoder
from pipeline.images import ImageError, decode, read_bytes

from .regions import Regions, region_boxes

CROP_STYLES = ("canvas", "resize")


def encoder_for(space: SpaceEmbeddings, device: str = "cpu") -> Encoder:
    """The space's own encoder, rebuilt from its spec (a checkpoint is found by its recorded path)."""
    return load_encoder(space.spec, device=device)


def crop_regions(encoder: Encoder, dataset: DatasetTables, style: str = "canvas", batch_size: int = 64,
                 progress: bool = False) -> Regions:
    """Per image hash, the L2-normalised global embeddings of its crops (R, E), one per region of
    `region_boxes`; they cost one encoder pass per crop on top of extraction's."""
    if style not in CROP_STYLES:
        raise VlcacheError(f"unknown crop style {style!r}; styles: {', '.join(CROP_STYLES)}")
    fill = tuple(int(255 * m) for m in encoder.space.preprocess["mean"])  # normalises to zero
    crops, owners = [], []
    regions: dict[str, list[np.ndarray]] = {}
    for image in dataset.images.to_pylist():
        try:
            picture = decode(read_bytes(image["uri"]), max(image["width"], image["height"]))
        except ImageError:
            continue
        for box in region_boxes(image["width"], image["height"], image["boxes"]):
            crops.append(encoder.preprocess(_crop(picture, box, style, fill)))
            owners.append(image["hash"])
        regions[image["hash"]] = []
    for start in tqdm(range(0, len(crops), batch_size), desc=f"encoding crops ({style})", unit="batch",
                      disable=not progress):
        batch = torch.stack(crops[start:start + batch_size])
        embeddings = encoder.encode_images(batch)["image_global"].astype(np.float32)
        for owner, embedding in zip(owners[start:start + batch_size], embeddings):
            regions[owner].append(embedding)
    by_hash = {h: np.stack(e) for h, e in regions.items() if e}
    return Regions(by_hash, 1 + len(crops) / max(1, len(by_hash)), f"crops ({style})")


def _crop(picture: Image.Image, box: np.ndarray, style: str, fill: tuple[int, ...]) -> Image.Image:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    if style == "resize":
        return picture.crop((x0, y0, x1, y1))  # preprocessing then resizes it to the input size
    canvas = Image.new("RGB", picture.size, fill)
    canvas.paste(picture.crop((x0, y0, x1, y1)), (x0, y0))
    return canvas
