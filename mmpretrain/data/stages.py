"""Small, pure data stages: raw shard sample -> decoded sample -> model inputs.

Only the declared members of a sample are ever decoded, and only as images (PIL), UTF-8 text or JSON: nothing
from a shard is unpickled or executed, whatever extensions it carries.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from mmpretrain.data.shards import RawSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt",)


@dataclass
class Sample:
    """A decoded pair: the image, its caption(s) and the sample's JSON metadata."""

    key: str
    image: Image.Image
    captions: list[str]
    meta: dict[str, Any]


def _first_member(raw: RawSample, extensions: tuple[str, ...]) -> bytes | None:
    for ext in extensions:
        value = raw.get(ext)
        if value is not None:
            return value
    return None


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB PIL image (fully loaded, so truncation errors surface here)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def decode_captions(data: bytes) -> list[str]:
    """A .txt member holds one caption, or several separated by newlines (for caption sampling)."""
    captions = [line.strip() for line in data.decode("utf-8").splitlines()]
    return [c for c in captions if c]


def decode_sample(raw: RawSample) -> Sample:
    """Decode the image, caption and metadata members of a raw sample; raise ValueError when one is missing."""
    key = raw.get("__key__", "?")
    image_bytes = _first_member(raw, IMAGE_EXTENSIONS)
    if image_bytes is None:
        raise ValueError(f"sample {key!r} has no image member (looked for {', '.join(IMAGE_EXTENSIONS)})")
    text_bytes = _first_member(raw, TEXT_EXTENSIONS)
    if text_bytes is None:
        raise ValueError(f"sample {key!r} has no .txt caption")
    captions = decode_captions(text_bytes)
    if not captions:
        raise ValueError(f"sample {key!r} has an empty caption")
    meta = json.loads(raw["json"].decode("utf-8")) if raw.get("json") is not None else {}
    return Sample(key=key, image=decode_image(image_bytes), captions=captions, meta=meta)


def choose_caption(sample: Sample, rng: random.Random) -> str:
    """Pick one of a sample's captions (caption sampling when a sample carries several)."""
    return sample.captions[0] if len(sample.captions) == 1 else rng.choice(sample.captions)


def shuffle(samples: Iterator[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle buffer: yields items in a seeded random order, holding at most `buffer_size`."""
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[Any] = []
    for item in samples:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def to_model_inputs(sample: Sample, image_transform: Callable[[Image.Image], torch.Tensor],
                    tokenize: Callable[[list[str]], torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
    """Turn a decoded sample into the per-modality tensors the towers consume."""
    return {
        "image": image_transform(sample.image),
        "text": tokenize([choose_caption(sample, rng)])[0],
    }
