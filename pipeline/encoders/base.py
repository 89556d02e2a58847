"""The one interface the pipeline runs an encoder through. open_clip models implement it
(`openclip.OpenClipEncoder`); bring any other encoder (Hugging Face, in-house, synthetic) by
subclassing `Encoder` in an importable module and naming it: `vlcache extract --encoder module:Class`.

The driver only calls the two class methods (cheap: no weights); each Dask worker builds one
instance per process and calls the rest. What a subclass must keep true:
- `describe` is a pure function of the request: the same request gives the same `EmbeddingSpace`
  (and so the same key) in every process, and the space names the encoder (`encoder="module:Class"`).
- `encode_*` return float arrays of the shapes the space declares: image_patches (B, P, patch_dim),
  image_cls (B, patch_dim), image_values (B, P, embed_dim), image_global (B, embed_dim) L2-normalised;
  per text its real tokens (n_i, text_dim) and a global (N, embed_dim) L2-normalised. Tokens are
  projected into the joint space (widths embed_dim) when the space says `projected`.
- The numbers depend only on the input and the space: a rerun must write the same values."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cache_schemas import EmbeddingSpace, VlcacheError
from cache_schemas.space import DEFAULT_ENCODER as OPEN_CLIP  # the built-in family; others are "module:Class"


class UnknownModelError(VlcacheError, ValueError):
    """Not a model, tag, checkpoint or encoder this pipeline can run."""


@dataclass(frozen=True)
class EncoderRequest:
    """What a user asks for; the encoder's `describe` turns it into the EmbeddingSpace it produces."""

    model: str
    pretrained: str | None = None
    image_tokens: tuple[str, ...] | None = None  # None: patches, and the class token where the tower has one
    layer: int = -1
    projected: bool = False
    dtype: str = "float16"
    encoder: str = OPEN_CLIP  # "open_clip", or "module:Class" naming an Encoder subclass
    tokenizer: str | None = None  # a local folder for a tokenizer open_clip would fetch from the hub


class Tokenizer(ABC):
    """Texts to padded token ids and each text's count of real tokens."""

    @abstractmethod
    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
        """(N, L) token ids and (N,) real-token counts (int32)."""

    def count(self, texts: Sequence[str]) -> np.ndarray:
        return self(texts)[1]


class Encoder(ABC):
    """A frozen encoder that turns pixels and token ids into the arrays of its space."""

    @classmethod
    @abstractmethod
    def describe(cls, request: EncoderRequest) -> EmbeddingSpace:
        """The space `request` produces, from the architecture alone (runs in the driver: no weights)."""

    @classmethod
    @abstractmethod
    def tokenizer(cls, space: EmbeddingSpace) -> Tokenizer:
        """The space's tokenizer (the driver counts tokens with it to plan token rows)."""

    def __init__(self, space: EmbeddingSpace, pretrained: str | None, device: str = "cpu"):
        self.space = space
        self.device = torch.device(device)
        self.tokenize = self.tokenizer(space)

    @property
    def image_size(self) -> int:
        """The input side; images are decoded with it as a draft size (JPEG decodes smaller, faster)."""
        size = self.space.preprocess["size"]
        return int(size if isinstance(size, int) else max(size))

    @classmethod
    def image_transform(cls, space: EmbeddingSpace) -> Callable[[Image.Image], np.ndarray] | None:
        """`preprocess` built from the space alone, picklable and giving the same pixels as a numpy
        array, for decode processes, which hold no model (`extract --decode-processes`); its module
        is imported by their fork server, so one that imports no torch lets them start at once.
        None, the default, decodes in threads instead."""
        return None

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A decoded RGB image to the (3, H, W) tensor `encode_images` takes."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """The space's image arrays for a batch (B, 3, H, W), by array name."""

    @abstractmethod
    def encode_texts(self, ids: torch.Tensor, n_tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per text its real tokens' embeddings, and the (N, embed_dim) L2-normalised globals."""


def encoder_class(name: str) -> type[Encoder]:
    """The Encoder subclass a space or request names: "open_clip" or "module:Class"."""
    if name == OPEN_CLIP:
        from .openclip import OpenClipEncoder

        return OpenClipEncoder
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise UnknownModelError(f"--encoder {name!r} must be {OPEN_CLIP!r} or 'module:Class'")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, ValueError, TypeError, SyntaxError) as exc:  # not found, a relative name, broken code
        raise UnknownModelError(f"--encoder {name}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
                                "is it on PYTHONPATH?") from None
    except AttributeError:
        raise UnknownModelError(f"--encoder {name}: module {module_name} has no {attribute}") from None
    if not (isinstance(found, type) and issubclass(found, Encoder)):
        raise UnknownModelError(f"--encoder {name} is not a subclass of pipeline.encoders.Encoder")
    if inspect.isabstract(found):  # the base itself, or a subclass that left part of the contract out
        missing = ", ".join(sorted(found.__abstractmethods__))
        raise UnknownModelError(f"--encoder {name} is abstract: it does not implement {missing} "
                                "(see pipeline/encoders/base.py)")
    return found


def describe(request: EncoderRequest) -> EmbeddingSpace:
    """The space `request` produces (no weights loaded)."""
    space = encoder_class(request.encoder).describe(request)
    if not isinstance(space, EmbeddingSpace):
        raise UnknownModelError(f"encoder {request.encoder}'s describe() returned {type(space).__name__}, "
                                "not an EmbeddingSpace")
    if space.encoder != request.encoder:
        raise UnknownModelError(f"encoder {request.encoder} described a space of encoder {space.encoder!r}: "
                                f"its describe() must set encoder={request.encoder!r}")
    return space


def tokenizer_for(space: EmbeddingSpace) -> Tokenizer:
    return encoder_class(space.encoder).tokenizer(space)


def load_encoder(space: EmbeddingSpace, pretrained: str | None = None, device: str = "cpu") -> Encoder:
    """The space's encoder with its weights: `pretrained`, else what the space records (a tag, or the
    checkpoint at its recorded path)."""
    return encoder_class(space.encoder)(space, pretrained or pretrained_of(space), device)


def pretrained_of(space: EmbeddingSpace) -> str | None:
    """The weights argument an encoder loads the space's weights from; None for a seeded random init."""
    scheme, _, value = space.weights.partition(":")
    if scheme == "pretrained":
        return value
    if scheme == "sha256":
        if not space.checkpoint_path:
            raise VlcacheError(f"space {space.key} does not record where its checkpoint is")
        return space.checkpoint_path
    return None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
