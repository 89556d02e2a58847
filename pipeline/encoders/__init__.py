"""Encoders the pipeline runs: the `Encoder` interface, open_clip models behind it, and plug-ins
named `module:Class` (see base.py for the contract a plug-in keeps)."""

from .base import (
    OPEN_CLIP,
    Encoder,
    EncoderRequest,
    Tokenizer,
    UnknownModelError,
    describe,
    encoder_class,
    file_sha256,
    load_encoder,
    tokenizer_for,
)

__all__ = ["OPEN_CLIP", "Encoder", "EncoderRequest", "Tokenizer", "UnknownModelError", "describe", "encoder_class",
           "file_sha256", "load_encoder", "tokenizer_for"]
