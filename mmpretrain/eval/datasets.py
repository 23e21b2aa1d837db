"""Load an eval set into memory: from WebDataset shards or from a plain folder of images.

Eval sets are small (thousands of samples), so they are read once into lists and batched by the harness.
Zero-shot sets carry a label per image; retrieval sets carry one or more captions per image.

- Shards: labels come from ``meta[label_key]`` (an int class index or a class name), or from a raw member of
  that name (clip_benchmark's ``<key>.cls`` layout); captions come from ``<key>.txt``.
- Folders: zero-shot reads ``root/<classname>/<image>``; retrieval reads ``root/**/<stem>.<img>`` with the
  captions in ``<stem>.txt``, one per line.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmpretrain.data.shards import RawSample, expand_shards, iter_samples
from mmpretrain.data.decode import IMAGE_EXTENSIONS, decode_captions, decode_image, decode_sample


@dataclass
class ZeroShotData:
    """Images with integer labels indexing `classnames`."""

    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]


@dataclass
class RetrievalData:
    """Images, each with its list of captions (at least one)."""

    images: list[Image.Image]
    captions: list[list[str]]


def is_image_folder(data: str) -> bool:
    """A directory holding no ``*.tar`` files is read as an image folder; anything else as a shard spec."""
    path = Path(data)
    return path.is_dir() and not any(path.glob("*.tar"))


def _limited(items: Iterator[Any], max_samples: int | None) -> Iterator[Any]:
    return items if max_samples is None else itertools.islice(items, max_samples)


def resolve_label(value: Any, classnames: Sequence[str], label_key: str, key: str) -> int:
    """Map a label (class index, or class name looked up in `classnames`) to a class index, or raise ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        if classnames and not 0 <= value < len(classnames):
            raise ValueError(f"sample {key!r}: label {label_key}={value} is out of range for "
                             f"{len(classnames)} classes")
        return value
    if isinstance(value, str) and value in classnames:
        return list(classnames).index(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return resolve_label(int(value.strip()), classnames, label_key, key)
    raise ValueError(f"sample {key!r}: label {label_key}={value!r} is neither a class index nor one of the "
                     f"class names {list(classnames)}")


def _raw_label(raw: RawSample, label_key: str) -> Any:
    """The label of a raw sample: ``meta[label_key]`` from its JSON, else a raw member named `label_key`."""
    key = raw.get("__key__", "?")
    if raw.get("json") is not None:
        meta = json.loads(raw["json"].decode("utf-8"))
        if label_key in meta:
            return meta[label_key]
    if raw.get(label_key) is not None:
        return raw[label_key].decode("utf-8").strip()
    raise ValueError(f"sample {key!r} has no label: no {label_key!r} field in its .json and no .{label_key} member")


def load_zeroshot_shards(spec: str, classnames: Sequence[str], label_key: str = "label",
                         max_samples: int | None = None) -> ZeroShotData:
    """Read labelled images from shards; a .txt caption is not required for classification sets."""
    images, labels = [], []
    for raw in _limited(iter_samples(expand_shards(spec)), max_samples):
        key = raw.get("__key__", "?")
        image_bytes = next((raw[ext] for ext in IMAGE_EXTENSIONS if raw.get(ext) is not None), None)
        if image_bytes is None:
            raise ValueError(f"sample {key!r} has no image member (looked for {', '.join(IMAGE_EXTENSIONS)})")
        labels.append(resolve_label(_raw_label(raw, label_key), classnames, label_key, key))
        images.append(decode_image(image_bytes))
    return ZeroShotData(images=images, labels=labels, classnames=list(classnames))


def load_retrieval_shards(spec: str, max_samples: int | None = None) -> RetrievalData:
    """Read images and all of their captions from shards."""
    images, captions = [], []
    for raw in _limited(iter_samples(expand_shards(spec)), max_samples):
        sample = decode_sample(raw)
        images.append(sample.image)
        captions.append(sample.captions)
    return RetrievalData(images=images, captions=captions)


def _image_files(folder: Path) -> list[Path]:
    suffixes = {f".{ext}" for ext in IMAGE_EXTENSIONS}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def load_zeroshot_folder(root: str, classnames: Sequence[str] = (), max_samples: int | None = None
                         ) -> ZeroShotData:
    """Read ``root/<classname>/<image>``; labels index `classnames`, or the sorted folder names if none given."""
    folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    names = list(classnames) or folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not among the class names {names}")
    pairs = ((path, names.index(folder)) for folder in folders for path in _image_files(Path(root) / folder))
    images, labels = [], []
    for path, label in _limited(pairs, max_samples):
        images.append(_open_rgb(path))
        labels.append(label)
    if not images:
        raise ValueError(f"{root}: no images found under <class>/ folders")
    return ZeroShotData(images=images, labels=labels, classnames=names)


def load_retrieval_folder(root: str, max_samples: int | None = None) -> RetrievalData:
    """Read every image under `root` with its same-stem ``.txt`` captions (one per line)."""
    images, captions = [], []
    for path in _limited(iter(_image_files(Path(root))), max_samples):
        text_path = path.with_suffix(".txt")
        if not text_path.is_file():
            raise ValueError(f"image {path} has no caption file {text_path.name}")
        lines = decode_captions(text_path.read_bytes())
        if not lines:
            raise ValueError(f"caption file {text_path} is empty")
        images.append(_open_rgb(path))
        captions.append(lines)
    if not images:
        raise ValueError(f"{root}: no images found")
    return RetrievalData(images=images, captions=captions)


def load_zeroshot(data: str, classnames: Sequence[str] = (), label_key: str = "label",
                  max_samples: int | None = None) -> ZeroShotData:
    """Zero-shot set from an image folder or a shard spec (shards need `classnames` to name their labels)."""
    if is_image_folder(data):
        return load_zeroshot_folder(data, classnames, max_samples)
    return load_zeroshot_shards(data, classnames, label_key, max_samples)


def load_retrieval(data: str, max_samples: int | None = None) -> RetrievalData:
    """Retrieval set from an image folder or a shard spec."""
    if is_image_folder(data):
        return load_retrieval_folder(data, max_samples)
    return load_retrieval_shards(data, max_samples)
