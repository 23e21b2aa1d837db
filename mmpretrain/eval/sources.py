"""Benchmark datasets as streams of records, in the layouts people already have on disk.

A `Source` is one evaluation set: its kind (zero-shot or retrieval), for zero-shot its class names and the
templates its own files carry, and its samples split into `units` (a shard, or a slice of a file list). Units are
small, picklable and listed in a fixed order, so the streaming reader (eval/stream.py) can hand them to
DataLoader workers and ranks round-robin and put the features back in order afterwards: every rank and every
worker count gives the same metrics.

`read(unit)` yields `Record`s, or the `SkipEvent` of a sample that cannot be used (unreadable image, bad label,
missing caption) or of a shard that broke: one bad image costs one sample, counted with its reason, as in
training. Image bytes are decoded in the worker that reads them (`decode_record_image`), never in the main process.

Formats here: CLIP_benchmark's webdataset layout (`ClipBenchmarkSource`), our shard layout (`ShardSource`: labels
from a ``.json`` field or a member) and image folders of class subfolders (`FolderSource`); torchvision datasets
and Karpathy-split JSON are in benchmark/sources_files.py. `benchmark/runner.open_source` picks one by a suite
task's format; the eval harness streams its image tasks through the first and the third.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from PIL import Image

from mmpretrain.data.decode import IMAGE_EXTENSIONS, decode_captions, first_member, load_rgb, open_image
from mmpretrain.data.shards import RawSample, expand_shards, read_shard_sizes
from mmpretrain.data.skips import SampleSkipped, SkipEvent
from mmpretrain.errors import DataError
from mmpretrain.eval.datasets import _raw_label, resolve_label, shard_attempts

# clip_benchmark's reader prefers webp, then png, jpg, jpeg (builder.build_wds_dataset); a sample holds one.
CLIP_BENCHMARK_IMAGES = ("webp", "png", "jpg", "jpeg")
# Files in a folder read as images (lower-cased suffixes), as torchvision's ImageFolder and clip_benchmark do.
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
FILES_PER_UNIT = 256


@dataclass
class Record:
    """One usable sample: an image (encoded bytes, or a PIL image where the dataset hands out decoded ones), its
    class index (zero-shot) or captions (retrieval), and its key (for galleries and skip details)."""

    key: str
    image: Union[bytes, Image.Image]
    label: Optional[int] = None
    captions: list[str] = field(default_factory=list)


Read = Iterator[Union[Record, SkipEvent]]


class Source(ABC):
    """One benchmark dataset. `kind` is "zeroshot" or "retrieval"; zero-shot sources give `classnames` and the
    `templates` of their own files (empty when the layout carries none: the suite names them then)."""

    kind: str = "zeroshot"
    classnames: list[str]
    templates: list[str]

    def __init__(self) -> None:
        self.classnames, self.templates = [], []

    @abstractmethod
    def units(self) -> list[Any]:
        """Picklable units of work in a fixed order; together they hold every sample once."""

    @abstractmethod
    def read(self, unit: Any) -> Read:
        """The records (and skips) of one unit, in a fixed order."""

    def describe(self) -> str:
        return type(self).__name__


def decode_record_image(record: Record) -> Image.Image:
    """A record's image as RGB pixels (SampleSkipped image_unreadable / image_missing for bad bytes)."""
    if isinstance(record.image, Image.Image):
        return record.image.convert("RGB")
    return load_rgb(open_image(record.image))


def read_lines(path: Path) -> list[str]:
    """The stripped, non-empty lines of a UTF-8 text file (class names, templates)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _image_bytes(raw: RawSample, extensions: Sequence[str]) -> bytes:
    data = first_member(raw, extensions)
    if data is None:
        raise SampleSkipped("image_missing", f"no {'/'.join(extensions)} member")
    return data


class ShardSource(Source):
    """Shards of our layout (or any webdataset): zero-shot labels from ``meta[label_key]`` or a ``.<label_key>``
    member (a class index or a class name), retrieval captions from ``.txt`` (one per line)."""

    def __init__(self, spec: str, kind: str, classnames: Sequence[str] = (), label_key: str = "label",
                 image_extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        self.spec, self.kind, self.label_key = spec, kind, label_key
        self.classnames = list(classnames)
        self.image_extensions = tuple(image_extensions)
        self.shards = expand_shards(spec)
        self.sizes = read_shard_sizes(self.shards) or {}

    def units(self) -> list[str]:
        return list(self.shards)

    def _members(self) -> frozenset[str]:
        if self.kind == "retrieval":
            return frozenset(self.image_extensions + ("txt",))
        return frozenset(self.image_extensions + ("json", self.label_key.lower()))

    def _parse(self, raw: RawSample) -> Record:
        if raw.get("__oversized__"):
            raise SampleSkipped("member_too_large", raw["__oversized__"])
        key = str(raw.get("__key__", "?"))
        if self.kind == "retrieval":
            captions = decode_captions(raw.get("txt"))
            return Record(key, _image_bytes(raw, self.image_extensions), captions=captions)
        label = resolve_label(_raw_label(raw, self.label_key), self.classnames, self.label_key)
        return Record(key, _image_bytes(raw, self.image_extensions), label=label)

    def read(self, unit: str) -> Read:
        return shard_attempts(unit, self._members(), self._parse, expected=self.sizes.get(unit))

    def describe(self) -> str:
        return f"{len(self.shards)} shards at {self.spec}"


class ClipBenchmarkSource(ShardSource):
    """CLIP_benchmark's webdataset layout (``clip_benchmark_export_wds``): ``<root>/<split>/{0..n-1}.tar`` with
    ``nshards.txt``, and beside the split ``classnames.txt``, ``zeroshot_classification_templates.txt`` and
    ``dataset_type.txt`` ("retrieval" for retrieval sets, else classification). Zero-shot labels are the ``.cls``
    member (a class index); retrieval captions the ``.txt`` member, one per line."""

    def __init__(self, root: str, split: str = "test", kind: Optional[str] = None) -> None:
        base = Path(root)
        nshards_file = base / split / "nshards.txt"
        if not nshards_file.is_file():
            raise FileNotFoundError(f"{nshards_file} does not exist (CLIP_benchmark's layout: "
                                    f"<root>/{split}/nshards.txt and {split}/0.tar ...)")
        try:
            nshards = int(nshards_file.read_text().strip())
        except ValueError:
            nshards = 0
        if nshards < 1:
            raise DataError(f"{nshards_file}: expected a positive shard count, got {nshards_file.read_text()[:40]!r}")
        type_file = base / "dataset_type.txt"
        declared = type_file.read_text().strip().lower() if type_file.is_file() else "classification"
        found = "retrieval" if declared == "retrieval" else "zeroshot"
        if declared not in ("retrieval", "classification"):
            raise DataError(f"{type_file}: dataset type {declared!r} is not supported (classification, retrieval)")
        if kind is not None and kind != found:
            raise DataError(f"{root} is a {declared} set (dataset_type.txt), the suite asks for {kind}")
        spec = base / split / ("{0..%d}.tar" % (nshards - 1) if nshards > 1 else "0.tar")  # numeric order, as theirs
        super().__init__(str(spec), found, label_key="cls", image_extensions=CLIP_BENCHMARK_IMAGES)
        self.root = root
        if found == "zeroshot":
            names, templates = base / "classnames.txt", base / "zeroshot_classification_templates.txt"
            self.classnames = read_lines(names) if names.is_file() else []
            self.templates = read_lines(templates) if templates.is_file() else []

    def _members(self) -> frozenset[str]:
        if self.kind == "retrieval":
            return frozenset(self.image_extensions + ("txt",))
        return frozenset(self.image_extensions + ("cls",))

    def describe(self) -> str:
        return f"CLIP_benchmark webdataset at {self.root} ({len(self.shards)} shards)"


class FolderSource(Source):
    """An image folder of class subfolders (``root/<class folder>/<image>``). Without `classnames` the sorted folder
    names are the classes. With them: folders named like classes take those classes (our eval sets, which may
    hold some of the classes only); otherwise (ImageNet's synset folders) one class name per folder, in sorted
    folder order, as a classnames file lists them."""

    def __init__(self, root: str, classnames: Sequence[str] = ()) -> None:
        super().__init__()
        self.root = root
        folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        if not folders:
            raise DataError(f"{root}: no class subfolders (an image folder holds root/<class>/<image>)")
        names = list(classnames) or folders
        if all(folder in names for folder in folders):
            label_of = {folder: names.index(folder) for folder in folders}
        elif len(names) == len(folders):
            label_of = {folder: index for index, folder in enumerate(folders)}
        else:
            raise DataError(f"{root}: {len(folders)} class folders, {len(names)} class names, and the folders are not "
                            f"named like the classes (give one class name per folder, in sorted folder order)")
        self.classnames = names
        self.files = [(str(path), label_of[folder]) for folder in folders
                      for path in sorted((Path(root) / folder).rglob("*"))
                      if path.is_file() and path.suffix.lower() in FOLDER_IMAGE_SUFFIXES]

    def units(self) -> list[tuple[int, int]]:
        return [(start, min(start + FILES_PER_UNIT, len(self.files)))
                for start in range(0, len(self.files), FILES_PER_UNIT)]

    def read(self, unit: tuple[int, int]) -> Read:
        for path, label in self.files[unit[0]:unit[1]]:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                yield SkipEvent("image_unreadable", self.root, 1, f"{path}: {e}", path)
                continue
            yield Record(path, data, label=label)

    def describe(self) -> str:
        return f"image folder {self.root} ({len(self.files)} images, {len(self.classnames)} classes)"
