"""open_clip's eval image steps (resize, then centre crop or pad) in PIL alone, with torchvision's
arithmetic, so the same pixels come out without importing torch: decode processes then start in a
fraction of a second instead of importing torch for themselves (about 10 s on a GPU host).

The encoder checks these steps against open_clip's own transform when it loads (encoders/openclip.py),
so an open_clip release that changes its preprocessing fails loudly instead of shifting the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ImageSteps:
    """A picklable PIL image -> uint8 (3, H, W) array. Scaling to [0, 1] and normalising happen where
    the batch is encoded."""

    size: tuple[int, int]  # (height, width)
    resize_mode: str = "shortest"  # shortest edge to size then crop; longest edge then pad; squash
    interpolation: str = "bicubic"  # open_clip's "random" means bicubic at eval
    fill_color: int = 0  # the padding of "longest"

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = self._resized(image)
        if self.resize_mode != "squash":
            image = _centre_crop_or_pad(image, self.size, self.fill_color if self.resize_mode == "longest" else 0)
        return np.array(image.convert("RGB")).transpose(2, 0, 1)  # a copy: writable, as torch wants

    def _resized(self, image: Image.Image) -> Image.Image:
        (h, w), resample = self.size, RESAMPLING.get(self.interpolation, Image.Resampling.BICUBIC)
        if self.resize_mode == "squash":
            return _resize(image, (h, w), resample)
        if self.resize_mode == "longest":
            return _resize(image, _keep_ratio(image, self.size, longest=True), resample)
        if h == w:  # torchvision's Resize(int): the shorter edge to size, the longer truncated
            short, long = sorted(image.size)
            new_short, new_long = h, int(h * long / short)
            width_is_short = image.width <= image.height
            return _resize(image, (new_long, new_short) if width_is_short else (new_short, new_long), resample)
        # open_clip's ResizeKeepRatio for a non-square size, which it builds without an interpolation: bicubic
        return _resize(image, _keep_ratio(image, self.size, longest=False), Image.Resampling.BICUBIC)


def _keep_ratio(image: Image.Image, size: tuple[int, int], longest: bool) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio at eval: both edges scaled by the ratio of the longest (or shortest) edge."""
    ratios = (image.height / size[0], image.width / size[1])
    ratio = max(ratios) if longest else min(ratios)
    return round(image.height / ratio), round(image.width / ratio)


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    if (image.height, image.width) == size:  # torchvision returns the image untouched
        return image
    return image.resize((size[1], size[0]), resample)


def _centre_crop_or_pad(image: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """torchvision's center_crop (and open_clip's CenterCropOrPad): pad to at least size, then crop the middle."""
    (h, w), (height, width) = size, (image.height, image.width)
    if w > width or h > height:
        left, top = max(w - width, 0) // 2, max(h - height, 0) // 2
        padded = Image.new(image.mode, (max(w, width), max(h, height)), (fill,) * len(image.getbands()))
        padded.paste(image, (left, top))
        image, (height, width) = padded, (padded.height, padded.width)
        if (height, width) == (h, w):
            return image
    top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
    return image.crop((left, top, left + w, top + h))
