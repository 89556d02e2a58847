"""Every open_clip family the research uses, random-init and offline, checked against open_clip itself:
the stored global embedding equals encode_image / encode_text, the stored tokens equal
forward_intermediates, and text is trimmed only where the tower is causal.

CLIP: vlcache-tiny (tests/test_encoder.py covers it the same way) and ViT-B-32 below. PE-Core: its
smallest real config, PE-Core-T-16-384. SigLIP2 (and SigLIP, the same towers): a shrunk twin with
SigLIP2's architecture (a timm ViT without class token pooled by attention, a bidirectional text
tower pooled at the last position) and a tokenizer built here, since the real one lives on the hub.
A timm tower with a class token, average pooling and a linear projection stands for timm towers in
general."""

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models.vision_transformer import _create_vision_transformer
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from cache_schemas import open_store
from pipeline.encoders import EncoderRequest, UnknownModelError, describe, load_encoder
from workflows.cli import main

from .conftest import run_extract

WORDS = ["a", "red", "blue", "green", "circle", "square", "cat", "dog", "on", "the", "mat", "and", "two"]
CAPTIONS = ["a red circle", "two blue squares on the mat and a green cat", "dog"]


@register_model
def vit_test_siglip(pretrained=False, **kwargs):
    """SigLIP's timm ViT (no class token, attention-pool head), shrunk."""
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, class_token=False, global_pool="map")
    return _create_vision_transformer("vit_test_siglip", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def vit_test_cls(pretrained=False, **kwargs):
    """A timm ViT with a class token, for timm towers in general."""
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    return _create_vision_transformer("vit_test_cls", pretrained=pretrained, **dict(args, **kwargs))


def _text_cfg(**overrides):
    return {"context_length": 16, "vocab_size": len(WORDS) + 3, "width": 64, "heads": 2, "layers": 2, **overrides}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Model configs of the shrunk twins, registered with open_clip; and a SigLIP-style tokenizer folder."""
    root = tmp_path_factory.mktemp("families")
    configs = {
        "test-siglip2": {
            "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": {"image_size": 64, "timm_model_name": "vit_test_siglip", "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": _text_cfg(hf_tokenizer_name="timm/ViT-B-32-SigLIP2-256",
                                  tokenizer_kwargs={"clean": "canonicalize"}, no_causal_mask=True, proj_bias=True,
                                  pool_type="last", norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": "tanh"})},
        "test-timm-cls": {
            "embed_dim": 32, "custom_text": True,
            "vision_cfg": {"image_size": 64, "timm_model_name": "vit_test_cls", "timm_model_pretrained": False,
                           "timm_pool": "token", "timm_proj": "linear"},
            "text_cfg": _text_cfg(vocab_size=49408)},
    }
    for name, cfg in configs.items():
        (root / "configs").mkdir(exist_ok=True)
        (root / "configs" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root / "configs")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder = root / "siglip-tokenizer"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return folder


def _float32(request: EncoderRequest) -> EncoderRequest:
    return EncoderRequest(**{**request.__dict__, "dtype": "float32"})


def _check_against_open_clip(request: EncoderRequest, image_size: int) -> None:
    """Stored arrays against open_clip's own encode_* and forward_intermediates, same input."""
    encoder = load_encoder(describe(_float32(request)))
    model, space = encoder.model, encoder.space
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, image_size, image_size)
    out = encoder.encode_images(pixels)
    with torch.no_grad():
        reference = F.normalize(model.encode_image(pixels), dim=-1).numpy()
        inter = model.forward_intermediates(image=pixels, image_indices=1, normalize_intermediates=True,
                                            image_output_fmt="NLC", image_output_extra_tokens=True)
    assert (out["image_global"] * reference).sum(1).min() >= 0.999
    np.testing.assert_allclose(out["image_patches"], inter["image_intermediates"][0].numpy(), atol=1e-4)
    assert out["image_patches"].shape == (2, space.dims["patches"], space.dims["patch_dim"])
    if "cls" in space.image_tokens:
        np.testing.assert_allclose(out["image_cls"], inter["image_intermediates_prefix"][0][:, 0].numpy(), atol=1e-4)
    ids, n = encoder.tokenize(CAPTIONS)
    tokens, pooled = encoder.encode_texts(ids, n)
    with torch.no_grad():
        reference = F.normalize(model.encode_text(ids), dim=-1).numpy()
        inter = model.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True)
    assert (pooled * reference).sum(1).min() >= 0.999
    for i, t in enumerate(tokens):
        assert t.shape == (n[i], space.dims["text_dim"])
        np.testing.assert_allclose(t, inter["text_intermediates"][0][i, :n[i]].numpy(), atol=1e-4)


def test_siglip2_twin_matches_open_clip_and_is_never_trimmed(twins):
    request = EncoderRequest("test-siglip2", tokenizer=str(twins))
    space = describe(request)
    assert space.text_trim == "none" and space.image_tokens == ("patches",)  # bidirectional; no class token
    assert space.dims == {"patches": 16, "patch_dim": 64, "text_dim": 64, "embed_dim": 64}
    assert space.tokenizer.startswith("sha256:")
    _check_against_open_clip(request, 64)


def test_pe_core_smallest_real_config_matches_open_clip_and_trims_its_causal_text():
    request = EncoderRequest("PE-Core-T-16-384")
    space = describe(request)
    assert space.text_trim == "causal" and space.image_tokens == ("patches", "cls")
    assert space.dims == {"patches": 576, "patch_dim": 192, "text_dim": 512, "embed_dim": 512}
    _check_against_open_clip(request, 384)
    trimmed = load_encoder(describe(_float32(request)))
    padded = load_encoder(dataclasses.replace(trimmed.space, text_trim="none"))
    ids, n = trimmed.tokenize(CAPTIONS)
    (a, ga), (b, gb) = trimmed.encode_texts(ids, n), padded.encode_texts(ids, n)
    np.testing.assert_allclose(ga, gb, atol=1e-4)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_a_timm_tower_with_a_class_token_and_a_linear_projection(twins):
    request = EncoderRequest("test-timm-cls")
    space = describe(request)
    assert space.image_tokens == ("patches", "cls") and space.text_trim == "causal"
    assert space.dims["embed_dim"] == 32 and space.dims["patch_dim"] == 64
    _check_against_open_clip(request, 64)


def test_clip_vit_b_32_matches_open_clip():
    _check_against_open_clip(EncoderRequest("ViT-B-32"), 224)


def test_what_a_tower_lacks_is_refused_in_one_line(twins):
    with pytest.raises(UnknownModelError, match="has no class token: drop 'cls'"):
        describe(EncoderRequest("test-siglip2", image_tokens=("patches", "cls"), tokenizer=str(twins)))
    with pytest.raises(UnknownModelError, match="no CLIP-style value path"):
        describe(EncoderRequest("PE-Core-T-16-384", image_tokens=("patches", "values")))
    with pytest.raises(UnknownModelError, match="no linear projection into the joint space"):
        describe(EncoderRequest("PE-Core-T-16-384", projected=True))
    with pytest.raises(UnknownModelError, match="uses open_clip's built-in tokenizer"):
        describe(EncoderRequest("vlcache-tiny", tokenizer=str(twins)))


def test_a_local_tokenizer_is_part_of_the_space(twins, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in twins.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    assert describe(EncoderRequest("test-siglip2", tokenizer=str(other))).key == \
        describe(EncoderRequest("test-siglip2", tokenizer=str(twins))).key  # the same files, anywhere
    (other / "tokenizer_config.json").write_text((twins / "tokenizer_config.json").read_text() + " ")
    assert describe(EncoderRequest("test-siglip2", tokenizer=str(other))).key != \
        describe(EncoderRequest("test-siglip2", tokenizer=str(twins))).key


def test_cli_extracts_pe_core_and_refuses_siglip2_without_its_tokenizer(tmp_path, capfd, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    args = ["extract", str(annotations), "--format", "sugarcrepe", "--images-root", str(images), "--dataset", "sc",
            "--store", str(tmp_path / "store"), "--quiet"]
    capfd.readouterr()
    assert main([*args, "--model", "ViT-B-32-SigLIP2-256"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "pass --tokenizer DIR" in err, err
    assert not (tmp_path / "store").exists()
    assert main([*args, "--model", "PE-Core-T-16-384"]) == 0
    store = open_store(tmp_path / "store")
    space = store.space("PE-Core-T-16-384")
    assert space.spec.image_tokens == ("patches", "cls") and len(space.images()) == len(store.dataset("sc").images)


def test_siglip2_twin_extracts_end_to_end_with_its_local_tokenizer(twins, tmp_path, small_sugarcrepe):
    annotations, images = small_sugarcrepe
    request = EncoderRequest("test-siglip2", tokenizer=str(twins))
    run_extract(annotations, "sugarcrepe", "sc", tmp_path / "store", images_root=images, request=request)
    space = open_store(tmp_path / "store").space("test-siglip2")
    texts = space.texts()
    assert len(texts) > 0 and (texts["n_tokens"].to_numpy() >= 2).all()  # words and the end token
    assert timm.is_model("vit_test_siglip")
