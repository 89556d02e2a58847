"""pipeline/preprocess.py: open_clip's eval image steps without torch, to the pixel."""

import numpy as np
import pytest
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms

from cache_schemas import VlcacheError
from pipeline.encoders import describe
from pipeline.encoders import openclip as openclip_encoder
from pipeline.encoders.base import EncoderRequest
from pipeline.preprocess import ImageSteps

SHAPES = [(37, 61), (50, 23), (5, 9), (64, 64), (301, 199), (1, 500), (500, 1)]  # (height, width)


@pytest.mark.parametrize("cfg", [
    {"size": 64},  # CLIP: shortest edge, centre crop
    {"size": (48, 80)},  # a non-square size: open_clip's ResizeKeepRatio
    {"size": 64, "resize_mode": "longest", "fill_color": 127},  # longest edge, then pad
    {"size": (48, 80), "resize_mode": "longest"},
    {"size": (40, 56), "resize_mode": "squash", "interpolation": "bilinear"},  # SigLIP
    {"size": 32, "interpolation": "random"},
])
def test_image_steps_give_open_clips_pixels(cfg):
    preprocess = PreprocessCfg(**cfg)
    reference = transforms.Compose(image_transform_v2(preprocess, is_train=False).transforms[:-2])
    size = (preprocess.size,) * 2 if isinstance(preprocess.size, int) else tuple(preprocess.size)
    steps = ImageSteps(size, preprocess.resize_mode, preprocess.interpolation, preprocess.fill_color)
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        try:
            expected = np.asarray(reference(image)).transpose(2, 0, 1)
        except ValueError:  # an edge scaled to nothing: refused alike
            with pytest.raises(ValueError):
                steps(image)
            continue
        ours = steps(image)
        assert ours.dtype == np.uint8 and ours.shape == (3, *size)
        assert np.array_equal(ours, expected), shape


def test_an_encoder_refuses_steps_that_drift_from_open_clip(monkeypatch):
    """Checked when the encoder loads: an open_clip release that changed its preprocessing fails
    loudly instead of shifting every pixel of a cache."""
    space = describe(EncoderRequest("vlcache-tiny"))
    assert isinstance(openclip_encoder.OpenClipEncoder.image_transform(space), ImageSteps)
    drifted = lambda size, mode, interpolation, fill: ImageSteps(size, mode, "bilinear", fill)  # noqa: E731
    monkeypatch.setattr(openclip_encoder, "ImageSteps", drifted)
    with pytest.raises(VlcacheError, match="disagree with open_clip"):
        openclip_encoder.OpenClipEncoder.image_transform(space)
