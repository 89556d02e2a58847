"""The embedding-space key: stable, and changed by exactly what changes the stored numbers."""

import dataclasses
import json
import subprocess
import sys

import pytest

from cache_schemas import EmbeddingSpace, InvalidSpecError, SchemaVersionError
from cache_schemas.version import parse_schema_version

SPEC = EmbeddingSpace(
    model="ViT-B-32", weights="pretrained:openai",
    preprocess={"size": (224, 224), "mean": (0.48, 0.45, 0.40), "std": (0.26, 0.26, 0.27)},
    context_length=77, text_trim="causal",
    dims={"patches": 49, "patch_dim": 768, "text_dim": 512, "embed_dim": 512},
    versions={"open_clip": "3.3.0", "torch": "2.14.1"},
)


def test_key_survives_a_json_round_trip_and_another_process():
    again = EmbeddingSpace.from_json(json.loads(json.dumps(SPEC.to_json())))
    assert again == SPEC and again.key == SPEC.key
    code = ("import json,sys; from cache_schemas import EmbeddingSpace; "
            "print(EmbeddingSpace.from_json(json.load(sys.stdin)).key)")
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(SPEC.to_json()),
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == SPEC.key


@pytest.mark.parametrize("change", [
    {"weights": "pretrained:laion2b_s34b_b79k"}, {"layer": -2}, {"projected": True}, {"dtype": "float32"},
    {"image_tokens": ("patches",)}, {"context_length": 64}, {"text_trim": "none"}, {"extraction_version": 2},
    {"preprocess": {"size": (256, 256), "mean": (0.48, 0.45, 0.40), "std": (0.26, 0.26, 0.27)}},
])
def test_what_changes_the_numbers_changes_the_key(change):
    assert dataclasses.replace(SPEC, **change).key != SPEC.key


def test_provenance_does_not_change_the_key():
    moved = dataclasses.replace(SPEC, versions={"open_clip": "3.3.1", "torch": "2.14.2"},
                                checkpoint_path="/new/place.pt")
    assert moved.key == SPEC.key
    assert SPEC.key.startswith("vit-b-32-")


def test_a_hand_edited_spec_is_refused():
    doc = SPEC.to_json() | {"layer": -3}
    with pytest.raises(InvalidSpecError, match="does not match its content"):
        EmbeddingSpace.from_json(doc)


@pytest.mark.parametrize("change, message", [
    ({"dtype": "bfloat16"}, "dtype must be one of"),
    ({"weights": "openai"}, "weights must be"),
    ({"dims": {"patches": 49}}, "dims.patch_dim"),
])
def test_invalid_specs_raise(change, message):
    with pytest.raises(InvalidSpecError, match=message):
        dataclasses.replace(SPEC, **change)


@pytest.mark.parametrize("value", ["2.0", "x", None, "1"])
def test_unreadable_schema_versions(value):
    with pytest.raises(SchemaVersionError):
        parse_schema_version(value)
    assert parse_schema_version("1.4") == (1, 4)
