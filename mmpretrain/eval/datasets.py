"""Load an eval set into memory: from WebDataset shards or from a plain folder of images.

Eval sets are small (thousands of samples), so they are read once into lists and batched by the harness.
Zero-shot sets carry a label per image; retrieval sets carry one or more captions per image.

- Shards: read by training's reader (data/safe_tar.py): local files, declared members only, none over the member
  size cap. Labels come from ``meta[label_key]`` (an int class index or a class name), or from a raw member of
  that name (clip_benchmark's ``<key>.cls`` layout); captions come from ``<key>.txt``.
- Folders: zero-shot reads ``root/<classname>/<image>``; retrieval reads ``root/**/<stem>.<img>`` with the
  captions in ``<stem>.txt``, one per line.

A bad sample (unreadable image, missing or unknown label, bad caption, oversized member) or a broken shard is
a counted skip with a reason from data/skips.py, kept in the set's `skips` ledger: one bad image in ten thousand
should cost one sample, not the evaluation. The harness reports the count and fails a set with nothing usable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from PIL import Image

from mmpretrain.data.safe_tar import DEFAULT_MAX_MEMBER_BYTES, ShardFailure, read_shards
from mmpretrain.data.shards import RawSample, expand_shards, read_shard_sizes
from mmpretrain.data.skips import SampleSkipped, SkipEvent, SkipLedger
from mmpretrain.data.decode import (IMAGE_EXTENSIONS, TEXT_EXTENSIONS, decode_captions, decode_sample, load_rgb,
                                    open_image)

Item = TypeVar("Item")


@dataclass
class ZeroShotData:
    """Images with integer labels indexing `classnames`, and what was skipped on the way."""

    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]
    skips: SkipLedger = field(default_factory=SkipLedger)


@dataclass
class RetrievalData:
    """Images, each with its list of captions (at least one), and what was skipped on the way."""

    images: list[Image.Image]
    captions: list[list[str]]
    skips: SkipLedger = field(default_factory=SkipLedger)


def is_image_folder(data: str) -> bool:
    """A directory holding no ``*.tar`` files is read as an image folder; anything else as a shard spec."""
    path = Path(data)
    return path.is_dir() and not any(path.glob("*.tar"))


def _collect(attempts: Iterable[Union[Item, SkipEvent]], max_samples: int | None
             ) -> tuple[list[Item], SkipLedger]:
    """The usable items of `attempts` (the first `max_samples` of them) and a ledger of the skips among them.

    Reading stops at the last item taken: `attempts` is lazy, so nothing after it is read or decoded.
    """
    usable: list[Item] = []
    skips = SkipLedger()
    for attempt in attempts:
        if isinstance(attempt, SkipEvent):
            skips.record(0, [attempt])
            continue
        usable.append(attempt)
        if len(usable) == max_samples:
            break
    skips.record(len(usable), [])
    return usable, skips


def _shard_attempts(spec: str, members: Collection[str], parse: Callable[[RawSample], Item],
                    max_member_bytes: int) -> Iterator[Union[Item, SkipEvent]]:
    """Each sample of the shard set parsed, or the SkipEvent of a sample `parse` refused or a shard that broke."""
    shards = expand_shards(spec)
    for item in read_shards(shards, members, sizes=read_shard_sizes(shards), max_member_bytes=max_member_bytes):
        if isinstance(item, ShardFailure):
            yield SkipEvent(item.reason, item.shard, item.lost, f"{item.shard}: {item.detail}")
            continue
        key, shard = str(item.get("__key__", "?")), str(item.get("__url__", "?"))
        try:
            parsed = parse(item)
        except SampleSkipped as e:
            yield SkipEvent(e.reason, shard, 1, f"{key} in {shard}: {e.detail}", key)
        else:
            yield parsed


def resolve_label(value: Any, classnames: Sequence[str], label_key: str) -> int:
    """Map a label (class index, or class name looked up in `classnames`) to a class index.

    Raises SampleSkipped("label_invalid") for an index out of range or a name that is not a class.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if classnames and not 0 <= value < len(classnames):
            raise SampleSkipped("label_invalid", f"label {label_key}={value} is out of range for "
                                f"{len(classnames)} classes")
        return value
    if isinstance(value, str) and value in classnames:
        return list(classnames).index(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return resolve_label(int(value.strip()), classnames, label_key)
    raise SampleSkipped("label_invalid", f"label {label_key}={value!r} is neither a class index nor one of the "
                        f"class names {list(classnames)}")


def _raw_label(raw: RawSample, label_key: str) -> Any:
    """The label of a raw sample: ``meta[label_key]`` from its JSON, else a raw member named `label_key`."""
    if raw.get("json") is not None:
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise SampleSkipped("label_invalid", f".json is not readable JSON: {e}") from None
        if isinstance(meta, dict) and label_key in meta:
            return meta[label_key]
    member = raw.get(label_key.lower())  # the reader lower-cases member extensions
    if member is not None:
        try:
            return member.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise SampleSkipped("label_invalid", f".{label_key} is not UTF-8: {e}") from None
    raise SampleSkipped("label_invalid", f"no label: no {label_key!r} field in its .json and no .{label_key} member")


def _labelled_image(raw: RawSample, classnames: Sequence[str], label_key: str) -> tuple[Image.Image, int]:
    """A zero-shot sample's decoded image and class index; the label is checked first, as it costs no decoding."""
    if raw.get("__oversized__"):
        raise SampleSkipped("member_too_large", raw["__oversized__"])
    label = resolve_label(_raw_label(raw, label_key), classnames, label_key)
    image_bytes = next((raw[ext] for ext in IMAGE_EXTENSIONS if raw.get(ext) is not None), None)
    return load_rgb(open_image(image_bytes)), label


def load_zeroshot_shards(spec: str, classnames: Sequence[str], label_key: str = "label",
                         max_samples: int | None = None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
                         ) -> ZeroShotData:
    """Read labelled images from shards; a .txt caption is not required for classification sets."""
    # The label member (clip_benchmark's .cls) is declared too; if label_key names a .json field instead, no
    # member of that name exists and declaring it costs nothing.
    members = frozenset(IMAGE_EXTENSIONS + ("json", label_key.lower()))
    attempts = _shard_attempts(spec, members, lambda raw: _labelled_image(raw, classnames, label_key),
                               max_member_bytes)
    pairs, skips = _collect(attempts, max_samples)
    return ZeroShotData(images=[image for image, _ in pairs], labels=[label for _, label in pairs],
                        classnames=list(classnames), skips=skips)


def load_retrieval_shards(spec: str, max_samples: int | None = None,
                          max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> RetrievalData:
    """Read images and all of their captions from shards, through the training decoder."""
    # No .json: retrieval uses none of it, and an unread member cannot fail to parse.
    members = frozenset(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)
    samples, skips = _collect(_shard_attempts(spec, members, decode_sample, max_member_bytes), max_samples)
    return RetrievalData(images=[s.image for s in samples], captions=[s.captions for s in samples], skips=skips)


def _image_files(folder: Path) -> list[Path]:
    suffixes = {f".{ext}" for ext in IMAGE_EXTENSIONS}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _file_attempts(root: str, paths: Iterable[Path], parse: Callable[[Path], Item]
                   ) -> Iterator[Union[Item, SkipEvent]]:
    """Each image file parsed, or the SkipEvent of one `parse` refused (counted against `root`)."""
    for path in paths:
        try:
            parsed = parse(path)
        except SampleSkipped as e:
            yield SkipEvent(e.reason, root, 1, f"{path}: {e.detail}", str(path))
        else:
            yield parsed


def _read_image_file(path: Path) -> Image.Image:
    """An image file decoded to RGB by the same checks as a shard's image (SampleSkipped when unreadable)."""
    return load_rgb(open_image(path.read_bytes()))


def load_zeroshot_folder(root: str, classnames: Sequence[str] = (), max_samples: int | None = None
                         ) -> ZeroShotData:
    """Read ``root/<classname>/<image>``; labels index `classnames`, or the sorted folder names if none given."""
    folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    names = list(classnames) or folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not among the class names {names}")
    label_of = {path: names.index(folder) for folder in folders for path in _image_files(Path(root) / folder)}
    pairs, skips = _collect(_file_attempts(root, label_of, lambda path: (_read_image_file(path), label_of[path])),
                            max_samples)
    return ZeroShotData(images=[image for image, _ in pairs], labels=[label for _, label in pairs],
                        classnames=names, skips=skips)


def _captioned_image(path: Path) -> tuple[Image.Image, list[str]]:
    """An image file and the captions of its same-stem .txt (one per line)."""
    text_path = path.with_suffix(".txt")
    captions = decode_captions(text_path.read_bytes() if text_path.is_file() else None)
    return _read_image_file(path), captions


def load_retrieval_folder(root: str, max_samples: int | None = None) -> RetrievalData:
    """Read every image under `root` with its same-stem ``.txt`` captions (one per line)."""
    pairs, skips = _collect(_file_attempts(root, _image_files(Path(root)), _captioned_image), max_samples)
    return RetrievalData(images=[image for image, _ in pairs], captions=[captions for _, captions in pairs],
                         skips=skips)


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
