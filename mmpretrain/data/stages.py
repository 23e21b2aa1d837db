"""Small, pure data stages: raw shard sample -> decoded sample -> model inputs.

Only the declared members of a sample are ever decoded, and only as images (PIL), UTF-8 text or JSON: nothing
from a shard is unpickled or executed, whatever extensions it carries.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    negatives: list[str] = field(default_factory=list)  # hard-negative captions from <key>.neg.json


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
    negatives = decode_negatives(raw["neg.json"], key) if raw.get("neg.json") is not None else []
    return Sample(key=key, image=decode_image(image_bytes), captions=captions, meta=meta, negatives=negatives)


def decode_negatives(data: bytes, key: str) -> list[str]:
    """A .neg.json member is a JSON list of hard-negative captions (strings); empty strings are dropped."""
    negatives = json.loads(data.decode("utf-8"))
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise ValueError(f"sample {key!r}: .neg.json must be a JSON list of strings")
    return [n.strip() for n in negatives if n.strip()]


def choose(options: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` of `options`: distinct while there are enough, then drawn again (so batches keep one shape)."""
    if count <= len(options):
        return rng.sample(options, count)
    return options + rng.choices(options, k=count - len(options))


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
                    tokenize: Callable[[list[str]], torch.Tensor], seed: int, positives: int = 1,
                    negatives: int = 0) -> dict[str, torch.Tensor]:
    """Turn a decoded sample into the tensors the towers consume.

    `text` is one sampled caption [ctx], or `positives` > 1 of them [P, ctx] for the multi-positive loss;
    `negatives` > 0 adds `negative_text` [k, ctx] drawn from the sample's hard negatives. Caption choice and
    augmentation are seeded by `seed` alone, so a sample comes out the same whatever was read before it.
    """
    rng = random.Random(seed)
    captions = tokenize(choose(sample.captions, positives, rng))
    with torch.random.fork_rng(devices=[]):  # torchvision draws from torch's global RNG; leave it as it was
        torch.manual_seed(seed)
        image = image_transform(sample.image)
    inputs = {"image": image, "text": captions[0] if positives == 1 else captions}
    if negatives > 0:
        if not sample.negatives:
            raise ValueError(f"sample {sample.key!r} has no hard negatives (<key>.neg.json) but "
                             f"data.negatives_per_sample={negatives}")
        inputs["negative_text"] = tokenize(choose(sample.negatives, negatives, rng))
    return inputs
