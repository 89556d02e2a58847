"""Pixels of a scene: a plain light background and each shape drawn into its cell, in its colour
and texture. Masks are cached by (shape, texture, cell side), so a scene costs a few array writes."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .config import PALETTE
from .scene import Scene

BACKGROUND = (236, 236, 230)
TINT = 0.65  # how far a texture's second tone moves from the colour towards white


def _star(e: float) -> list[tuple[float, float]]:
    c, angles = e / 2, np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
    radii = np.where(np.arange(10) % 2 == 0, c, 0.45 * c)
    return [(c + r * np.cos(a), c + r * np.sin(a)) for r, a in zip(radii, angles)]


def _cross(draw: ImageDraw.ImageDraw, e: float) -> None:
    draw.rectangle([e / 3, 0, 2 * e / 3, e], fill=255)
    draw.rectangle([0, e / 3, e, 2 * e / 3], fill=255)


# Each draws a white shape filling a cell whose last pixel is `e`.
DRAW: dict[str, Callable[[ImageDraw.ImageDraw, float], None]] = {
    "circle": lambda draw, e: draw.ellipse([0, 0, e, e], fill=255),
    "square": lambda draw, e: draw.rectangle([0, 0, e, e], fill=255),
    "triangle": lambda draw, e: draw.polygon([(e / 2, 0), (e, e), (0, e)], fill=255),
    "diamond": lambda draw, e: draw.polygon([(e / 2, 0), (e, e / 2), (e / 2, e), (0, e / 2)], fill=255),
    "star": lambda draw, e: draw.polygon(_star(e), fill=255),
    "cross": _cross,
    "hexagon": lambda draw, e: draw.regular_polygon((e / 2, e / 2, e / 2), 6, fill=255),
    "ring": lambda draw, e: draw.ellipse([0, 0, e, e], outline=255, width=max(2, round(e / 5))),
}


@lru_cache(maxsize=4096)
def _masks(shape: str, texture: str, d: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels in the colour, pixels in its tint) of a d x d cell."""
    image = Image.new("L", (d, d), 0)
    DRAW[shape](ImageDraw.Draw(image), d - 1)
    inside = np.asarray(image) > 0
    main = inside & _pattern(texture, d, period)
    return main, inside & ~main


def shape_mask(shape: str, d: int) -> np.ndarray:
    """The pixels a shape covers in a d x d cell (bool)."""
    main, tint = _masks(shape, "solid", d, max(4, d))
    return main | tint


def _pattern(texture: str, d: int, period: int) -> np.ndarray:
    """Where a texture shows the main colour; its scale follows the image, not the object."""
    y, x = np.mgrid[:d, :d]
    half = period // 2
    if texture == "striped":
        return (x + y) % period < half
    if texture == "checkered":
        return (x // half + y // half) % 2 == 0
    if texture == "dotted":
        return (x % period - half) ** 2 + (y % period - half) ** 2 > (period / 3) ** 2
    return np.ones((d, d), dtype=bool)


def render(scene: Scene, image_size: int) -> Image.Image:
    canvas = np.empty((image_size, image_size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    period = max(4, image_size // 16)
    for obj in scene:
        main, tint = _masks(obj.shape, obj.texture, obj.d, period)
        cell = canvas[obj.y0:obj.y0 + obj.d, obj.x0:obj.x0 + obj.d]
        colour = np.array(PALETTE[obj.colour])
        cell[main] = colour
        cell[tint] = np.round(colour + (255 - colour) * TINT).astype(np.uint8)
    return Image.fromarray(canvas)
