"""Encoders: causal trimming, token selection, weights from a local checkpoint, real architectures."""

import dataclasses

import numpy as np
import open_clip
import pytest
import torch

from cache_schemas import InvalidSpecError
from pipeline.encoders import EncoderRequest, UnknownModelError, describe, load_encoder
from pipeline.encoders.openclip import text_features

CAPTIONS = ["a red circle", "a small blue striped square to the left of a large green triangle", "hi",
            "two dogs playing with a frisbee in the park on a sunny afternoon"]


@pytest.fixture(scope="module")
def tiny():
    return load_encoder(describe(EncoderRequest("vlcache-tiny")))


def test_trimmed_causal_text_equals_the_padded_pass(tiny):
    assert tiny.space.text_trim == "causal"
    ids, n = tiny.tokenize(CAPTIONS)
    trimmed_tokens, trimmed_global = tiny.encode_texts(ids, n)
    padded = load_encoder(dataclasses.replace(tiny.space, text_trim="none"))
    full_tokens, full_global = padded.encode_texts(ids, n)
    for a, b in zip(trimmed_tokens, full_tokens):
        np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(trimmed_global, full_global, atol=1e-3)
    # and both equal open_clip's own text encoder
    reference = torch.nn.functional.normalize(tiny.model.encode_text(ids), dim=-1).detach().numpy()
    np.testing.assert_allclose(trimmed_global, reference, atol=1e-3)


def test_training_text_features_are_open_clips_own_in_value_and_gradient(tiny):
    """text_features (the training loops' text pass) runs a causal tower only to the longest caption."""
    ids, n = tiny.tokenize(CAPTIONS[:3])  # the longest is well short of the context
    assert int(n.max()) < ids.shape[1]
    model = load_encoder(tiny.space).model.requires_grad_(True)  # a copy: the fixture's stays frozen
    grads = []
    for features in (text_features, lambda m, i, _: m.encode_text(i, normalize=True)):
        model.zero_grad()
        out = features(model, ids, n)
        out.sum().backward()
        grads.append((out.detach(), model.token_embedding.weight.grad.clone()))
    (trimmed, trimmed_grad), (full, full_grad) = grads
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(trimmed_grad, full_grad, atol=1e-4, rtol=1e-4)  # float sums in another order


def test_only_real_tokens_are_returned(tiny):
    ids, n = tiny.tokenize(CAPTIONS)
    tokens, _ = tiny.encode_texts(ids, n)
    assert [len(t) for t in tokens] == list(n)
    assert n[2] == 3  # start, "hi", end
    assert all(t.dtype == np.float16 and t.shape[1] == tiny.space.text_token_dim for t in tokens)


def test_image_arrays_have_the_spec_shapes(tiny):
    out = tiny.encode_images(torch.randn(3, 3, 64, 64))
    dims = tiny.space.dims
    assert out["image_patches"].shape == (3, dims["patches"], dims["patch_dim"])
    assert out["image_cls"].shape == (3, dims["patch_dim"])
    assert out["image_global"].shape == (3, dims["embed_dim"])
    np.testing.assert_allclose(np.linalg.norm(out["image_global"].astype(np.float32), axis=1), 1, atol=1e-2)


def test_projected_cls_is_the_global_embedding():
    space = describe(EncoderRequest("vlcache-tiny", projected=True))
    out = load_encoder(space).encode_images(torch.randn(2, 3, 64, 64))
    cls = out["image_cls"].astype(np.float32)
    np.testing.assert_allclose(cls / np.linalg.norm(cls, axis=1, keepdims=True), out["image_global"], atol=2e-3)
    assert out["image_patches"].shape[-1] == space.dims["embed_dim"]


def test_an_earlier_layer_gives_other_tokens_and_another_space(tiny):
    earlier = describe(EncoderRequest("vlcache-tiny", layer=0))
    assert earlier.key != tiny.space.key
    x = torch.randn(1, 3, 64, 64)
    first, last = load_encoder(earlier).encode_images(x), tiny.encode_images(x)
    assert not np.allclose(first["image_patches"], last["image_patches"], atol=1e-2)
    np.testing.assert_allclose(first["image_global"], last["image_global"], atol=1e-3)
    with pytest.raises(UnknownModelError, match="--layer 5 is out of range"):
        describe(EncoderRequest("vlcache-tiny", layer=5))


def test_a_local_checkpoint_is_loaded_and_keyed_by_its_bytes(tmp_path):
    torch.manual_seed(123)  # weights that differ from vlcache-tiny's seeded random init
    trained = open_clip.create_model("vlcache-tiny")
    path = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), path)
    space = describe(EncoderRequest("vlcache-tiny", pretrained=str(path)))
    assert space.weights.startswith("sha256:") and space.checkpoint_path == str(path)
    encoder = load_encoder(space, str(path))
    x = torch.randn(2, 3, 64, 64)
    expected = torch.nn.functional.normalize(trained.eval().encode_image(x), dim=-1).detach().numpy()
    np.testing.assert_allclose(encoder.encode_images(x)["image_global"], expected, atol=2e-3)
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(path.read_bytes())
    assert describe(EncoderRequest("vlcache-tiny", pretrained=str(moved))).key == space.key


def test_a_pretrained_tag_is_described_without_downloading():
    space = describe(EncoderRequest("ViT-B-32", pretrained="openai"))  # HF_HUB_OFFLINE=1: a download would fail
    assert space.weights == "pretrained:openai"
    assert space.dims == {"patches": 49, "patch_dim": 768, "text_dim": 512, "embed_dim": 512}
    assert space.preprocess["size"] == [224, 224]


def test_bad_requests_are_refused_clearly():
    with pytest.raises(UnknownModelError, match="did you mean ViT-B-32"):
        describe(EncoderRequest("ViT-B-33"))
    with pytest.raises(InvalidSpecError, match="unknown image token types"):
        describe(EncoderRequest("vlcache-tiny", image_tokens=("patches", "pixels")))


def test_preprocess_defers_scaling_to_the_batch_and_changes_no_number(tiny):
    """preprocess keeps uint8 pixels (the decode threads run PIL steps only); encode_images scales and
    normalises the batch exactly as open_clip's own eval transform does, to the bit."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    cfg = {k: v for k, v in tiny.space.preprocess.items() if k != "load"}
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(image)[None]
    pixels = tiny.preprocess(image)[None]
    assert pixels.dtype == torch.uint8 and pixels.shape == reference.shape
    ours, theirs = tiny.encode_images(pixels), tiny.encode_images(reference)
    assert all(np.array_equal(ours[name], theirs[name]) for name in ours)


def test_value_features_capture_only_their_own_threads_forward():
    """A worker's threads share one model: the hook that captures the last block's input for value
    features must not take another thread's batch (two threads per GPU worker is the default)."""
    import threading

    encoder = load_encoder(describe(EncoderRequest("vlcache-tiny", image_tokens=("patches", "values"))))
    pixels = torch.randint(0, 256, (3, 3, encoder.image_size, encoder.image_size), dtype=torch.uint8)
    alone = encoder.encode_images(pixels)
    beside: list[dict] = []
    with encoder._last_block_input() as captured:  # this thread between its hook and its forward
        other = threading.Thread(target=lambda: beside.append(encoder.encode_images(pixels)))
        other.start()
        other.join()
    assert captured == []
    assert np.array_equal(beside[0]["image_values"], alone["image_values"])
