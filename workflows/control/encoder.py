"""`ControlEncoder`: a synthetic dual encoder for the positive control, where it is known by
construction what the tokens hold.

It perceives the control world's scenes exactly (each object is a connected blob of one palette
colour; its shape is the nearest of the world's own shape masks) and writes:
- global embeddings that are a **bag of words**: the sum over objects of (colour vector + shape
  vector), the same for a caption and for its attribute swap, plus a little noise so ties break at
  random. Global cosine must score chance on swaps and near 100% on replaced colours.
- patch tokens that carry the **binding**: each patch is the coverage-weighted sum of the objects
  on it (colour + shape, so "red circle" and "blue square" are told apart from "blue circle" and
  "red square"), plus a position code and noise, in a rotated space of their own;
- text tokens that are **contextual and causal**, as a causal text tower makes them: each word's
  vector plus the words before it in its noun phrase ("circle" in "a red circle" carries "red").

So any head that reads local tokens can, and must, learn the swaps, on unseen colour-shape pairs
too. It runs through the normal extraction path: `vlcache extract ... --encoder
workflows.control.encoder:ControlEncoder --model vlcache-control`."""

from __future__ import annotations

import hashlib
import re
from functools import cache

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from cache_schemas import EmbeddingSpace
from pipeline.encoders import Encoder, EncoderRequest, Tokenizer, UnknownModelError
from pipeline.images import LOAD_POLICY
from workflows.world.captions import NUMBERS
from workflows.world.config import PALETTE, SHAPES, SIZES, TEXTURES
from workflows.world.render import BACKGROUND, shape_mask

NAME = "workflows.control.encoder:ControlEncoder"
SEED = 0  # the random vectors below: part of the space's identity ("random:0")
SIZE = 64  # input side, pixels
GRID = 8  # patches per side
DIM = 64  # token and embedding width
CONTEXT = 24  # tokens
NOISE = {"patch": 0.05, "global": 0.02}  # per-dimension standard deviation, relative to unit vectors
PHRASE_CONTEXT = 0.7  # weight of earlier words of the phrase in a token's vector
TEMPLATE = 16  # side of the normalised masks shapes are matched on
STARTS = ("a", "an", "and", ",", ";", "the", *NUMBERS.values())  # words that open a noun phrase


class ControlEncoder(Encoder):
    @classmethod
    def describe(cls, request: EncoderRequest) -> EmbeddingSpace:
        tokens = request.image_tokens or ("patches", "cls")
        if set(tokens) - {"patches", "cls"} or request.layer != -1 or request.projected or request.pretrained \
                or request.tokenizer:
            raise UnknownModelError("the control encoder stores image tokens 'patches' and 'cls' of its one layer, "
                                    "unprojected, with no weights or tokenizer to load")
        return EmbeddingSpace(
            model=request.model, encoder=NAME, weights=f"random:{SEED}",
            preprocess={"size": [SIZE, SIZE], "mode": "RGB", "interpolation": "nearest", "resize_mode": "squash",
                        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "load": LOAD_POLICY},
            context_length=CONTEXT, text_trim="causal",
            dims={"patches": GRID * GRID, "patch_dim": DIM, "text_dim": DIM, "embed_dim": DIM},
            image_tokens=tuple(tokens), dtype=request.dtype, versions={"control": "1"},
        )

    @classmethod
    def tokenizer(cls, space: EmbeddingSpace) -> Tokenizer:
        return WordTokenizer()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.NEAREST)  # nearest keeps palette colours exact
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)

    def encode_images(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {"image_patches": [], "image_cls": [], "image_global": []}
        for image in pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
            blobs, coverage = perceive(image)
            concepts = np.array([vectors().concept(c, s) for c, s in blobs]).reshape(-1, DIM)
            noise = _noise(image.tobytes(), (GRID * GRID + 1, DIM))
            patches = coverage @ concepts + (1 - coverage.sum(1, keepdims=True)) * vectors().background
            patches = (patches + vectors().position + NOISE["patch"] * noise[:-1]) @ vectors().image_rotation
            bag = concepts.sum(0)
            out["image_patches"].append(patches)
            out["image_cls"].append(bag @ vectors().image_rotation)
            out["image_global"].append(_unit(bag @ vectors().joint + NOISE["global"] * noise[-1]))
        return {name: np.stack(v).astype(self.space.dtype) for name, v in out.items()}

    def encode_texts(self, ids: torch.Tensor, n_tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        tokens, pooled = [], []
        for row, n in zip(ids.cpu().numpy(), n_tokens):
            words = [VOCABULARY[i] for i in row[:n]]
            tokens.append(contextual_tokens(words).astype(self.space.dtype))
            bag = sum((count * vectors().concept(c, s) for c, s, count in phrases(words)), np.zeros(DIM))
            noise = _noise(" ".join(words).encode(), (1, DIM))[0]
            pooled.append(_unit(bag @ vectors().joint + NOISE["global"] * noise))
        return tokens, np.stack(pooled).astype(self.space.dtype)


# -- seeing ----------------------------------------------------------------------------------------

def perceive(image: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The objects of an (H, W, 3) uint8 scene as (colour, shape), and each patch's coverage by each
    object, (GRID * GRID, objects): the share of the patch's pixels that belong to it."""
    foreground = np.abs(image.astype(np.int16) - BACKGROUND).max(-1) > 24
    labels, n = ndimage.label(foreground, structure=np.ones((3, 3)))
    blobs, masks = [], []
    for k in range(1, n + 1):
        mask = labels == k
        if mask.sum() < 4:  # stray pixels (a resampled edge), not an object
            continue
        blobs.append((_colour(image[mask]), _shape(mask)))
        masks.append(mask)
    side = SIZE // GRID
    coverage = np.array([m.reshape(GRID, side, GRID, side).mean((1, 3)).ravel() for m in masks]).reshape(-1, GRID ** 2)
    return blobs, coverage.T


def _colour(pixels: np.ndarray) -> str:
    names = list(PALETTE)
    distance = np.abs(pixels[:, None, :].astype(np.int16) - np.array([PALETTE[c] for c in names])).sum(-1)
    return names[np.bincount(distance.argmin(1), minlength=len(names)).argmax()]


def _shape(mask: np.ndarray) -> str:
    """The world shape whose mask, drawn at this blob's size, overlaps it best (both cropped to their
    extent and resampled to TEMPLATE x TEMPLATE)."""
    ys, xs = np.nonzero(mask)
    blob = _normalised(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    side = int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1
    scores = {s: (blob & t).sum() / (blob | t).sum() for s, t in _templates(side).items()}
    return max(scores, key=scores.get)


@cache
def _templates(side: int) -> dict[str, np.ndarray]:
    out = {}
    for shape in SHAPES:
        mask = shape_mask(shape, side)
        ys, xs = np.nonzero(mask)
        out[shape] = _normalised(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    return out


def _normalised(mask: np.ndarray) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((TEMPLATE, TEMPLATE), Image.BILINEAR)
    return np.asarray(image) >= 128


# -- reading ---------------------------------------------------------------------------------------

PLURALS = {s + ("es" if s.endswith(("s", "x")) else "s"): s for s in SHAPES}
VOCABULARY = ("<pad>", "<unk>", *STARTS, "is", "of", "left", "right", "above", "below", "bigger", "smaller",
              "than", *PALETTE, *SHAPES, *PLURALS, *SIZES, "medium", *TEXTURES)
WORD_ID = {w: i for i, w in enumerate(VOCABULARY)}


class WordTokenizer(Tokenizer):
    """Lower-cased words and punctuation, one id each, padded with 0 to the context length."""

    def __call__(self, texts):
        ids = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
        counts = np.zeros(len(texts), dtype=np.int32)
        for i, text in enumerate(texts):
            words = re.findall(r"[a-z]+|[,;]", text.lower())[:CONTEXT]
            ids[i, :len(words)] = torch.tensor([WORD_ID.get(w, 1) for w in words], dtype=torch.long)
            counts[i] = len(words)
        return ids, counts


def phrases(words: list[str]) -> list[tuple[str | None, str | None, int]]:
    """(colour, shape, count) of each noun phrase ("two red circles" -> ("red", "circle", 2))."""
    out: list[list] = []
    for w in words:
        if w in STARTS or not out:
            out.append([None, None, 1])
        if w in NUMBERS.values():
            out[-1][2] = [k for k, v in NUMBERS.items() if v == w][0]
        elif w in PALETTE:
            out[-1][0] = w
        elif w in SHAPES or w in PLURALS:
            out[-1][1] = PLURALS.get(w, w)
    return [(c, s, n) for c, s, n in out if c or s]


def contextual_tokens(words: list[str]) -> np.ndarray:
    """(n, DIM): each word's vector plus PHRASE_CONTEXT times the earlier words of its phrase."""
    out, context = [], np.zeros(DIM)
    for w in words:
        if w in STARTS:
            context = np.zeros(DIM)
        vector = vectors().word(w)
        out.append(vector + PHRASE_CONTEXT * context)
        context = context + vector
    return np.array(out).reshape(-1, DIM)


# -- the fixed random vectors ------------------------------------------------------------------------

class _Vectors:
    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        unit = lambda n: _unit(rng.standard_normal((n, DIM)))  # noqa: E731
        self.colours = dict(zip(PALETTE, unit(len(PALETTE))))
        self.shapes = dict(zip(SHAPES, unit(len(SHAPES))))
        self.background = unit(1)[0]
        self.position = 0.5 * unit(GRID * GRID)
        self.words = dict(zip(VOCABULARY, unit(len(VOCABULARY))))
        self.image_rotation = _orthogonal(rng)  # image and text tokens live in unrelated bases,
        self.text_rotation = _orthogonal(rng)  # as the raw tokens of two towers do
        self.joint = _orthogonal(rng)  # the shared space of the global embeddings

    def concept(self, colour: str | None, shape: str | None) -> np.ndarray:
        return (self.colours[colour] if colour else 0) + (self.shapes[shape] if shape else 0)

    def word(self, w: str) -> np.ndarray:
        """Colour and shape words carry their concept's vector, in the text tower's basis."""
        w = PLURALS.get(w, w)
        base = self.colours.get(w, self.shapes.get(w, self.words.get(w, self.words["<unk>"])))
        return base @ self.text_rotation


@cache
def vectors() -> _Vectors:
    return _Vectors(SEED)


def _orthogonal(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return q * np.sign(np.diag(r))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _noise(content: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Gaussian noise that is a function of the content: the same input always gets the same numbers."""
    seed = int.from_bytes(hashlib.sha256(content).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(shape)
