"""The training image recipe: open_clip's train transform, applied crop-first so big JPEGs decode small.

open_clip's train transform is RandomResizedCrop -> RGB -> (colour jitter, grayscale) -> tensor -> normalize.
We build exactly that with open_clip, then run its crop differently: the crop box is drawn from the image
header (the same torch RNG draws RandomResizedCrop makes), and where the box is at least twice the output size
the JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's scaled IDCT (PIL's `draft`, what `thumbnail` uses),
never below the output size. Then crop and resize as torchvision does. With `reduced_jpeg_decode` off the
result is pixel-identical to open_clip's transform; on, it is the same crop, downscaled in the DCT first.

With `uint8_transfer` the workers stop before ToTensor + Normalize and hand over uint8 images: a quarter of the
bytes to collate and pass between processes, and no per-pixel float work in the workers. `ImageNormalizer` then
finishes them on the training device, with the same float32 operations in the same order, so the numbers that
reach the model are identical.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import Compose, Normalize, RandomResizedCrop
from torchvision.transforms.functional import pil_modes_mapping

from mmpretrain.data.decode import load_rgb
from mmpretrain.errors import ConfigError


@dataclass
class AugmentConfig:
    """Training augmentation (open_clip's AugmentationCfg) and how images are decoded for it."""

    scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # RandomResizedCrop area range
    color_jitter: Optional[list[float]] = None  # [brightness, contrast, saturation, hue], with color_jitter_prob
    color_jitter_prob: float = 0.0
    grayscale_prob: float = 0.0
    reduced_jpeg_decode: bool = True  # decode big JPEGs at 1/2..1/8 scale, never below the crop's output size
    uint8_transfer: bool = True       # workers hand over uint8 images, normalised on the training device

    def validate(self) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"data.augment.scale must be [low, high] with 0 < low <= high <= 1, got {self.scale}")
        if self.color_jitter_prob > 0 and (self.color_jitter is None or len(self.color_jitter) != 4):
            raise ConfigError("data.augment.color_jitter_prob > 0 needs data.augment.color_jitter = "
                              "[brightness, contrast, saturation, hue]")
        for key in ("color_jitter_prob", "grayscale_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"data.augment.{key} must be in [0, 1], got {getattr(self, key)}")


class ImageNormalizer(nn.Module):
    """uint8 [B, 3, H, W] -> what ToTensor + Normalize would have made of them (float32), on any device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Plain floats, not buffers: an engine that casts the model to bf16 must not round the mean and std, and
        # checkpoints and exports hold the towers only, as before.
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # ToTensor: to float, divide by 255; Normalize: subtract the mean, divide by the std (same order).
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        return images.to(torch.float32).div(255).sub(mean).div(std)


def _to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class CropFirstTransform:
    """open_clip's train Compose, with its RandomResizedCrop done on the undecoded image (see module doc)."""

    decodes_lazily = True  # takes an opened, not yet decoded PIL image (data/stages.py: image_pixels)

    def __init__(self, transform: Compose, reduced_jpeg_decode: bool = True, uint8_transfer: bool = False) -> None:
        self.transform = transform
        self.reduced_jpeg_decode = reduced_jpeg_decode
        first = transform.transforms[0]
        self.crop = first if isinstance(first, RandomResizedCrop) else None
        tail = transform.transforms[-2:]
        uint8 = uint8_transfer and self.crop is not None and _is_to_tensor_then_normalize(tail)
        self.normalize = tail[-1] if uint8 else None
        self.rest = Compose(transform.transforms[1:-2] if self.normalize else transform.transforms[1:])

    def device_normalizer(self) -> Optional[ImageNormalizer]:
        """What the training device must apply to the images this transform makes (None: they are final)."""
        return ImageNormalizer(self.normalize.mean, self.normalize.std) if self.normalize else None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.crop is None:  # a recipe we do not recognise runs as it is
            return self.transform(load_rgb(image))
        top, left, height, width = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
        out_h, out_w = self.crop.size
        full_w, full_h = image.size
        factor = min(height / out_h, width / out_w)  # how far the crop could shrink before it is under size
        if self.reduced_jpeg_decode and factor >= 2 and image.format == "JPEG":
            image.draft("RGB", (math.ceil(full_w / factor), math.ceil(full_h / factor)))
        resample = pil_modes_mapping[self.crop.interpolation]
        if image.size == (full_w, full_h):
            # crop, then resize: what torchvision's resized_crop does (a resize `box` would also read past the edge)
            cropped = load_rgb(image).crop((left, top, left + width, top + height))
            out = self.rest(cropped.resize((out_w, out_h), resample=resample))
        else:  # decoded smaller: the same box, scaled, at sub-pixel precision (rounding would shift it 1-4 px)
            sx, sy = image.size[0] / full_w, image.size[1] / full_h
            box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
            out = self.rest(load_rgb(image).resize((out_w, out_h), resample=resample, box=box))
        return _to_uint8_tensor(out.convert("RGB")) if self.normalize else out


def _is_to_tensor_then_normalize(tail: Sequence[object]) -> bool:
    # open_clip ends its train transform with MaybeToTensor (or torchvision's ToTensor), then Normalize.
    return (len(tail) == 2 and type(tail[0]).__name__ in ("MaybeToTensor", "ToTensor")
            and isinstance(tail[1], Normalize))


def build_train_transform(preprocess: Mapping[str, Any], config: AugmentConfig) -> CropFirstTransform:
    """The model's train transform (its size, mean, std, interpolation) with this augmentation recipe."""
    config.validate()
    aug = open_clip.AugmentationCfg(
        scale=(config.scale[0], config.scale[1]),
        color_jitter=tuple(config.color_jitter) if config.color_jitter_prob > 0 else None,
        color_jitter_prob=config.color_jitter_prob or None,
        gray_scale_prob=config.grayscale_prob or None)
    with warnings.catch_warnings():
        # open_clip warns "Unused augmentation cfg items" for colour jitter and grayscale, which it does use
        # (it reads them from the config object; tests/test_augment.py checks both take effect).
        warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
        transform = open_clip.image_transform(
            preprocess["size"], is_train=True, mean=preprocess.get("mean"), std=preprocess.get("std"),
            interpolation=preprocess.get("interpolation"), resize_mode=preprocess.get("resize_mode"), aug_cfg=aug)
    return CropFirstTransform(transform, config.reduced_jpeg_decode, config.uint8_transfer)
