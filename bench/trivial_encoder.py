"""A plug-in encoder that costs almost nothing: 4 numbers per image (its mean colour and brightness) and
per token (from the word's hash). With it, what an extraction costs is the driver's and the pipeline's
own work, which is what bench/scale_bench.py measures. `--encoder trivial_encoder:TrivialEncoder` with
bench/ on the path."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from cache_schemas import EmbeddingSpace
from pipeline.encoders import Encoder, EncoderRequest
from pipeline.encoders.base import Tokenizer
from pipeline.images import LOAD_POLICY

NAME = "trivial_encoder:TrivialEncoder"
WIDTH, CONTEXT, SIZE = 4, 4, 8


def space(model: str = "trivial") -> EmbeddingSpace:
    return EmbeddingSpace(
        model=model, encoder=NAME, weights="random:0",
        preprocess={"size": [SIZE, SIZE], "mode": "RGB", "interpolation": "nearest", "resize_mode": "squash",
                    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "load": LOAD_POLICY},
        context_length=CONTEXT, text_trim="causal",
        dims={"patches": 1, "patch_dim": WIDTH, "text_dim": WIDTH, "embed_dim": WIDTH},
        image_tokens=("patches",), versions={"trivial": "1"})


class WordCounter(Tokenizer):
    def __call__(self, texts):
        counts = np.array([min(CONTEXT, max(1, len(t.split()))) for t in texts], np.int32)
        ids = torch.zeros((len(texts), CONTEXT), dtype=torch.long)
        for i, text in enumerate(texts):
            for j, word in enumerate(text.split()[:CONTEXT]):
                ids[i, j] = int(hashlib.sha1(word.encode()).hexdigest()[:6], 16) + 1
        return ids, counts


class TrivialEncoder(Encoder):
    @classmethod
    def describe(cls, request: EncoderRequest) -> EmbeddingSpace:
        return space(request.model)

    @classmethod
    def tokenizer(cls, space: EmbeddingSpace) -> Tokenizer:
        return WordCounter()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        small = image.convert("RGB").resize((SIZE, SIZE), Image.NEAREST)
        return torch.from_numpy(np.asarray(small, dtype=np.float32).copy()).permute(2, 0, 1)

    def encode_images(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        colour = pixels.mean(dim=(2, 3)) / 255.0
        vector = torch.cat([colour, torch.ones(len(pixels), 1)], dim=1)  # never all zeros
        vector = torch.nn.functional.normalize(vector, dim=1).numpy()
        return {"image_patches": vector[:, None, :], "image_global": vector}

    def encode_texts(self, ids: torch.Tensor, n_tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        values = (ids.float()[:, :, None] * torch.tensor([1.0, 3.0, 7.0, 11.0])) % 97 + 1  # never zero
        tokens = [values[i, :n].numpy() for i, n in enumerate(n_tokens)]
        pooled = torch.nn.functional.normalize(values.mean(dim=1), dim=1).numpy()
        return tokens, pooled
