"""What a compositional test set is once read: images by reference, and the caption choices made about them.

Two shapes cover the published benchmarks:

- `ChoiceItem`: one image, its true caption and one or more typed wrong captions (SugarCrepe, ARO, our shards).
  The model is right about a negative when the image scores the positive strictly higher.
- `GroupItem`: Winoground's 2 images x 2 captions, scored as text, image and group.

Images are held as `ImageRef`s (a file, optionally cropped, or a shard member's bytes) and decoded only when
embedded: SugarCrepe alone points at five thousand COCO images, too many to hold decoded. Readers check each
image's header when the set is read, so a missing or non-image file is a counted skip before any model runs; an
image that breaks while its pixels decode is skipped (and counted) at embedding time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from mmpretrain.data.decode import load_rgb, open_image
from mmpretrain.data.skips import SampleSkipped, SkipLedger

Box = tuple[float, float, float, float]  # left, top, right, bottom (PIL's crop box)


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: a file path, or the bytes of a shard member (`data`); `crop` is ARO's region."""

    path: str = ""
    crop: Optional[Box] = None
    data: Optional[bytes] = field(default=None, compare=True, repr=False)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError:
            raise SampleSkipped("image_missing", f"{self.path}: no such file") from None
        except OSError as e:
            raise SampleSkipped("image_unreadable", f"{self.path}: {type(e).__name__}: {e}") from None

    def check_file(self) -> None:
        """Read the header only (cheap): missing, empty or non-image files fail here."""
        open_image(self.read_bytes())

    def check_crop(self) -> None:
        if self.crop is not None:
            left, top, right, bottom = self.crop
            if right <= left or bottom <= top:
                raise SampleSkipped("label_invalid", f"{self.path}: empty crop box {self.crop}")

    def load(self) -> Image.Image:
        """The decoded RGB image, cropped to `crop` (PIL pads a box reaching outside the image, as ARO's does)."""
        image = load_rgb(open_image(self.read_bytes()))
        return image.crop(self.crop) if self.crop is not None else image


@dataclass
class ChoiceItem:
    """`image` indexes `CompositionalData.images`; each negative is (caption, type)."""

    image: int
    positive: str
    negatives: list[tuple[str, str]]
    key: str = ""


@dataclass
class GroupItem:
    """Winoground: caption i describes image i."""

    images: tuple[int, int]
    captions: tuple[str, str]
    key: str = ""


@dataclass
class CompositionalData:
    """A read set: its distinct images, its items, and what was skipped reading it.

    `joint_type` (the order formats): also score "the positive beats every negative" under that type name, which
    is ARO's number for COCO-Order and Flickr-Order (one right caption among five)."""

    images: list[ImageRef]
    choices: list[ChoiceItem] = field(default_factory=list)
    groups: list[GroupItem] = field(default_factory=list)
    skips: SkipLedger = field(default_factory=SkipLedger)
    joint_type: Optional[str] = None


class ImageTable:
    """Distinct image references, each checked once: items sharing an image share its index (and its failure)."""

    def __init__(self) -> None:
        self.refs: list[ImageRef] = []
        self._index: dict[ImageRef, int] = {}
        self._files: dict[str, Optional[SampleSkipped]] = {}  # a file's header check, shared by its crops

    def add(self, ref: ImageRef) -> int:
        """The index of `ref`, checked on first sight; raises the same SampleSkipped for every item using a bad one."""
        if ref in self._index:
            return self._index[ref]
        if ref.data is None:
            if ref.path not in self._files:
                try:
                    ref.check_file()
                    self._files[ref.path] = None
                except SampleSkipped as e:
                    self._files[ref.path] = e
            if self._files[ref.path] is not None:
                raise self._files[ref.path]  # type: ignore[misc]
        else:
            ref.check_file()
        ref.check_crop()
        self._index[ref] = len(self.refs)
        self.refs.append(ref)
        return self._index[ref]


def image_under(root: Path, name: str) -> ImageRef:
    """`root / name`, refused when the annotation's name leads outside `root` (an absolute path or ``..``).

    Judged on the names, not on resolved paths: image folders made of symlinks (a Hugging Face cache snapshot
    links every file to a blob elsewhere) stay readable."""
    base = os.path.normpath(root)
    path = os.path.normpath(os.path.join(base, name))
    if os.path.isabs(name) or os.path.commonpath([base, path]) != base:
        raise SampleSkipped("image_missing", f"{name!r} lies outside the image folder {root}")
    return ImageRef(path=path)
