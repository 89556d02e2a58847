"""An embedding space: everything that decides what numbers an encoder writes for an input.

Two experiments that ask for the same encoder, weights, preprocessing and token selection get the
same `EmbeddingSpace.key`, so they share one cache instead of recomputing it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import InvalidSpecError

IMAGE_TOKEN_TYPES = ("patches", "cls", "values")
DTYPES = ("float16", "float32")
TEXT_TRIM_POLICIES = ("causal", "none")

# Bump when the pipeline's output for the same spec changes (a bug fix in pooling, say): old caches
# then stop matching instead of silently mixing two versions of the numbers.
EXTRACTION_VERSION = 1

# Fields that decide the stored numbers. Provenance (library versions, the checkpoint's path as
# typed) and derived facts (dims) stay out, so moving a checkpoint or upgrading a patch release of
# torch does not orphan a cache.
_KEY_FIELDS = (
    "model",
    "weights",
    "preprocess",
    "image_tokens",
    "layer",
    "projected",
    "dtype",
    "context_length",
    "text_trim",
    "extraction_version",
)
DEFAULT_ENCODER = "open_clip"  # the built-in family; others are "module:Class" plug-ins


@dataclass(frozen=True)
class EmbeddingSpace:
    """The spec of one encoder's embedding space, as stored in `spaces/<key>/space.json`.

    encoder: the code that computes it: "open_clip", or "module:Class" for a plug-in encoder.
    tokenizer: a local tokenizer folder's digest, when one replaced the model's hub tokenizer.
    weights: "pretrained:<tag>", "sha256:<hex of the checkpoint's bytes>", or "random:<seed>".
    layer: the transformer block whose tokens are stored, counted like Python indices (-1 = last).
    projected: tokens pass through the final norm and the projection into the joint space.
    dims: derived from the model: patches (P), patch_dim, text_dim, embed_dim.
    """

    model: str
    weights: str
    preprocess: Mapping[str, Any]
    context_length: int
    text_trim: str
    dims: Mapping[str, int]
    image_tokens: tuple[str, ...] = ("patches", "cls")
    layer: int = -1
    projected: bool = False
    dtype: str = "float16"
    extraction_version: int = EXTRACTION_VERSION
    encoder: str = DEFAULT_ENCODER
    tokenizer: str | None = None  # "sha256:..." of a local tokenizer folder; None: the model's own
    checkpoint_path: str | None = None
    tokenizer_path: str | None = None  # where the local tokenizer was (provenance; workers load it)
    versions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain JSON values in memory too, so a spec equals itself after a round trip through space.json.
        for name in ("preprocess", "dims", "versions"):
            object.__setattr__(self, name, _jsonable(getattr(self, name)))
        object.__setattr__(self, "image_tokens", tuple(self.image_tokens))
        _check(bool(self.model), "model must be a non-empty name")
        _check(self.encoder == DEFAULT_ENCODER or re.fullmatch(r"[\w.]+:\w+", self.encoder or "") is not None,
               f"encoder must be {DEFAULT_ENCODER!r} or 'module:Class', got {self.encoder!r}")
        _check(re.fullmatch(r"(pretrained|sha256|random):\S+", self.weights or "") is not None,
               f"weights must be pretrained:<tag>, sha256:<hex> or random:<seed>, got {self.weights!r}")
        _check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        _check(self.text_trim in TEXT_TRIM_POLICIES, f"text_trim must be one of {TEXT_TRIM_POLICIES}")
        unknown = set(self.image_tokens) - set(IMAGE_TOKEN_TYPES)
        _check(not unknown, f"unknown image token types {sorted(unknown)}; known: {IMAGE_TOKEN_TYPES}")
        _check(isinstance(self.layer, int), "layer must be an integer")
        for name in ("patches", "patch_dim", "text_dim", "embed_dim"):
            _check(int(self.dims.get(name, 0)) > 0, f"dims.{name} must be a positive integer")

    @property
    def key(self) -> str:
        """A stable, readable identifier: the model's name plus a hash of the fields that matter."""
        payload = {name: _jsonable(getattr(self, name)) for name in _KEY_FIELDS}
        # Left out at their defaults, so keys made before these fields existed stay what they were.
        if self.encoder != DEFAULT_ENCODER:
            payload["encoder"] = self.encoder
        if self.tokenizer is not None:
            payload["tokenizer"] = self.tokenizer
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        return f"{_slug(self.model)}-{digest}"

    @property
    def token_dim(self) -> int:
        return self.dims["embed_dim"] if self.projected else self.dims["patch_dim"]

    @property
    def text_token_dim(self) -> int:
        return self.dims["embed_dim"] if self.projected else self.dims["text_dim"]

    def describe(self) -> str:
        tokens = "+".join(self.image_tokens)
        where = "projected" if self.projected else "raw"
        encoder = "" if self.encoder == DEFAULT_ENCODER else f" ({self.encoder})"
        return f"{self.model}{encoder} [{self.weights}] layer {self.layer} {where} {tokens} {self.dtype}"

    def to_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self)) | {"key": self.key}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbeddingSpace:
        known = {f.name for f in fields(cls)}
        missing = {"model", "weights", "preprocess", "context_length", "text_trim", "dims"} - set(data)
        if missing:
            raise InvalidSpecError(f"space spec lacks {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        values["image_tokens"] = tuple(values.get("image_tokens", ("patches", "cls")))
        space = cls(**values)
        if "key" in data and data["key"] != space.key:
            raise InvalidSpecError(
                f"space spec's key {data['key']} does not match its content ({space.key}): "
                "it was edited by hand or written by another extraction version"
            )
        return space


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidSpecError(message)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "model"


def _jsonable(value: Any) -> Any:
    """Tuples become lists and mappings plain dicts, so a spec hashes the same after a JSON round trip."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
