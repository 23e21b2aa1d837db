"""Our train transform against open_clip's: the same images, exactly, unless reduced JPEG decoding is on."""

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mmpretrain.data.augment import AugmentConfig, build_train_transform
from mmpretrain.data.decode import open_image
from mmpretrain.errors import ConfigError

PREPROCESS = {"size": 64, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
              "interpolation": "bicubic", "resize_mode": "shortest"}


def _photo(width: int, height: int, fmt: str) -> bytes:
    rng = np.random.default_rng(width * height)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([np.sin(xx / 13.0 + c) * 70 + np.cos(yy / 9.0 * c) * 50 + 128 for c in (1, 2, 3)], -1)
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue()


def _run(transform, data: bytes, seed: int, ours: bool) -> torch.Tensor:
    torch.manual_seed(seed)
    if not ours:
        return transform(Image.open(io.BytesIO(data)))
    out = transform(open_image(data))
    normalizer = transform.device_normalizer()
    return normalizer(out.unsqueeze(0))[0] if normalizer is not None else out


@pytest.mark.parametrize("size,fmt", [((300, 200), "JPEG"), ((90, 160), "PNG"), ((640, 480), "JPEG"),
                                      ((64, 64), "PNG")])
@pytest.mark.parametrize("uint8_transfer", [True, False])
def test_without_reduced_decoding_the_images_equal_open_clips(size, fmt, uint8_transfer):
    reference = open_clip.image_transform(64, is_train=True)
    ours = build_train_transform(PREPROCESS, AugmentConfig(reduced_jpeg_decode=False, uint8_transfer=uint8_transfer))
    data = _photo(*size, fmt)
    for seed in range(5):
        theirs, mine = _run(reference, data, seed, False), _run(ours, data, seed, True)
        assert mine.dtype == torch.float32 and torch.equal(mine, theirs)


def test_reduced_decoding_keeps_the_crop_and_nearly_the_pixels():
    reference = open_clip.image_transform(64, is_train=True)
    ours = build_train_transform(PREPROCESS, AugmentConfig())
    data = _photo(640, 480, "JPEG")  # crops of >= 0.9 of the area: at least 2x the 64 px output, so 1/2 decoding
    image = open_image(data)
    torch.manual_seed(0)
    ours(image)
    assert image.size[0] < 640  # the JPEG was decoded at a reduced scale
    for seed in range(5):
        difference = (_run(reference, data, seed, False) - _run(ours, data, seed, True)).abs().mean()
        assert difference < 0.03  # normalised units (std ~0.27): about 2 grey levels of 255 (measured ~0.01)


def test_uint8_transfer_hands_over_a_quarter_of_the_bytes():
    ours = build_train_transform(PREPROCESS, AugmentConfig())
    torch.manual_seed(0)
    out = ours(open_image(_photo(100, 100, "PNG")))
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)


def test_augmentation_recipe_reaches_the_transform():
    data = _photo(120, 120, "PNG")
    gray = build_train_transform(PREPROCESS, AugmentConfig(grayscale_prob=1.0))
    torch.manual_seed(0)
    out = gray(open_image(data))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    jitter = build_train_transform(PREPROCESS, AugmentConfig(color_jitter=[0.4, 0.4, 0.4, 0.1], color_jitter_prob=1.0))
    plain = build_train_transform(PREPROCESS, AugmentConfig())
    assert not torch.equal(_run(jitter, data, 3, True), _run(plain, data, 3, True))
    wide = build_train_transform(PREPROCESS, AugmentConfig(scale=[0.08, 1.0]))
    assert wide.crop is not None and wide.crop.scale == (0.08, 1.0)


@pytest.mark.parametrize("config,message", [
    (AugmentConfig(scale=[0.5]), "scale must be"),
    (AugmentConfig(scale=[0.9, 0.5]), "scale must be"),
    (AugmentConfig(color_jitter_prob=0.8), "needs data.augment.color_jitter"),
    (AugmentConfig(grayscale_prob=1.5), "grayscale_prob must be in"),
])
def test_bad_recipes_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        config.validate()
