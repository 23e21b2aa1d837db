"""Decoding the members of a raw shard sample: images (PIL), UTF-8 captions, hard-negative JSON.

Only the declared members of a sample are ever decoded, and only as images (PIL), UTF-8 text or JSON: nothing
from a shard is unpickled or executed, whatever extensions it carries.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mmpretrain.data.skips import SampleLimits, SampleSkipped, check_image_size
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


def first_member(raw: RawSample, extensions: Sequence[str]) -> bytes | None:
    """The bytes of the sample's first member among `extensions` (in that order of preference), or None."""
    return next((raw[ext] for ext in extensions if raw.get(ext) is not None), None)


def open_image(data: bytes | None, limits: SampleLimits | None = None) -> Image.Image:
    """Open image bytes and check the header's size against `limits`; pixels are decoded later (`load_rgb`).

    Any exception from PIL on these untrusted bytes (it raises OSError, SyntaxError, ValueError, struct.error,
    and more) means the image is unreadable: a counted skip, whatever its type.
    """
    if data is None:
        raise SampleSkipped("image_missing", f"no {'/'.join(IMAGE_EXTENSIONS)} member")
    if not data:
        raise SampleSkipped("image_unreadable", "zero bytes")
    try:
        with warnings.catch_warnings():  # our own pixel limit decides, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SampleSkipped("image_too_large", str(e)) from None
    except Exception as e:
        raise SampleSkipped("image_unreadable", f"{type(e).__name__}: {e}") from None
    if limits is not None:  # training skips by its limits; evaluation takes every image it can read
        check_image_size(*image.size, limits)
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode the pixels (truncated data fails here) as RGB."""
    try:
        image.load()
        return image.convert("RGB")
    except Exception as e:  # see open_image
        raise SampleSkipped("image_unreadable", f"{type(e).__name__}: {e}") from None


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB PIL image (fully loaded, so truncation errors surface here)."""
    return load_rgb(open_image(data))


def decode_captions(data: bytes | None) -> list[str]:
    """A .txt member holds one caption, or several separated by newlines (for caption sampling)."""
    if data is None:
        raise SampleSkipped("caption_missing", "no .txt member")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleSkipped("caption_not_utf8", str(e)) from None
    captions = [c for c in (line.strip() for line in text.splitlines()) if c]
    if not captions:
        raise SampleSkipped("caption_empty", "the .txt member holds no text")
    return captions


def decode_negatives(data: bytes, key: str) -> list[str]:
    """A .neg.json member is a JSON list of hard-negative captions (strings); empty strings are dropped."""
    try:
        negatives = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SampleSkipped("negatives_invalid", f"sample {key!r}: .neg.json: {e}") from None
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise SampleSkipped("negatives_invalid", f"sample {key!r}: .neg.json must be a JSON list of strings")
    return [n.strip() for n in negatives if n.strip()]


def decode_sample(raw: RawSample, limits: SampleLimits | None = None, load: bool = True) -> Sample:
    """Decode the members of a raw sample; raise SampleSkipped (a ValueError) naming the reason when one is bad.

    With `load=False` the image is only opened and checked: the training transform decodes it, possibly at a
    reduced JPEG scale (see data/augment.py). Members a sample lacks are simply absent from the result.
    """
    key = raw.get("__key__", "?")
    if raw.get("__oversized__"):
        raise SampleSkipped("member_too_large", raw["__oversized__"])
    image = open_image(first_member(raw, IMAGE_EXTENSIONS), limits)
    captions = decode_captions(first_member(raw, TEXT_EXTENSIONS))
    meta = json.loads(raw["json"].decode("utf-8")) if raw.get("json") is not None else {}
    negatives = decode_negatives(raw["neg.json"], key) if raw.get("neg.json") is not None else []
    return Sample(key=key, image=load_rgb(image) if load else image, captions=captions, meta=meta,
                  negatives=negatives)


def choose(options: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` of `options`: distinct while there are enough, then drawn again (so batches keep one shape)."""
    if count <= len(options):
        return rng.sample(options, count)
    return options + rng.choices(options, k=count - len(options))
