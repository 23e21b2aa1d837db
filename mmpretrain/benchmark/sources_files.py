"""Benchmark sets read from the files other tools leave on disk: torchvision datasets and Karpathy-split JSON.

`TorchvisionSource` reads a dataset torchvision has already downloaded (or that was laid out as torchvision expects),
through torchvision's own class, offline: it never downloads, and a dataset that is not there is one
FileNotFoundError naming the root and the dataset, raised before torchvision is asked. Units are index ranges; the
torchvision object is built once per process on first use (in a DataLoader worker: its first `read`) and never
pickled. Torchvision's classes verify what they load as they always do: CIFAR, STL-10, SVHN, Flowers-102 and
FER2013 check the MD5 of their files every time one is built (for STL-10, the 2.6 GiB unlabeled file included).

`KarpathySource` reads the retrieval test sets in Karpathy's split files (``dataset_coco.json``,
``dataset_flickr30k.json``): the chosen split's image paths and captions are kept (5,000 entries for COCO's test
split), the images are read in the workers.
"""

from __future__ import annotations

import inspect
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from PIL import Image

from mmpretrain.benchmark.classnames import load_classnames
from mmpretrain.data.skips import SkipEvent
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.eval.sources import FILES_PER_UNIT, Read, Record, Source


@dataclass(frozen=True)
class TorchvisionDataset:
    """How to build one torchvision dataset offline.

    `splits` maps our split names to the class's keyword arguments; `needs` are the paths (relative to the root,
    ``{split}`` standing for torchvision's split name; a mapping gives them per split) that must exist before
    torchvision is asked, so that a missing dataset is our one-line error and torchvision never downloads, extracts
    or writes. `classnames` names a shipped list (mmpretrain/benchmark/classnames) used instead of torchvision's
    `classes`; without one the dataset's own names are used, with ``_`` and ``/`` read as spaces where `spaced`."""

    cls: str
    splits: dict[str, dict[str, Any]]
    needs: Union[tuple[str, ...], dict[str, tuple[str, ...]]]
    classnames: Optional[str] = None
    spaced: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


def _train_test() -> dict[str, dict[str, Any]]:
    return {"train": {"train": True}, "test": {"train": False}}


def _named(*names: str, **aliases: str) -> dict[str, dict[str, Any]]:
    splits = {name: {"split": name} for name in names}
    splits.update({alias: {"split": target} for alias, target in aliases.items()})
    return splits


# Datasets torchvision 0.29 builds offline from files on disk with no dependency beyond ours (scipy comes with
# scikit-learn). Not here: PCAM (needs h5py), Caltech-101/256 (no test split, and the class creates folders),
# ImageNet-style variants without a torchvision class (use format: folder), and sets with no standard zero-shot
# labels (CelebA, VOC, Kitti, Places365's path-like names).
TORCHVISION_DATASETS: dict[str, TorchvisionDataset] = {
    "cifar10": TorchvisionDataset("CIFAR10", _train_test(), ("cifar-10-batches-py",)),
    "cifar100": TorchvisionDataset("CIFAR100", _train_test(), ("cifar-100-python",), classnames="cifar100"),
    "stl10": TorchvisionDataset("STL10", _named("train", "test"), ("stl10_binary",)),
    "mnist": TorchvisionDataset("MNIST", _train_test(), ("MNIST",), classnames="mnist"),
    "fashion-mnist": TorchvisionDataset("FashionMNIST", _train_test(), ("FashionMNIST",)),
    "usps": TorchvisionDataset("USPS", _train_test(), {"train": ("usps.bz2",), "test": ("usps.t.bz2",)},
                               classnames="mnist"),
    "svhn": TorchvisionDataset("SVHN", _named("train", "test", "extra"), ("{split}_32x32.mat",), classnames="svhn"),
    "gtsrb": TorchvisionDataset("GTSRB", _named("train", "test"),
                                {"train": ("gtsrb/GTSRB/Training",),
                                 "test": ("gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv")},
                                classnames="gtsrb"),
    "country211": TorchvisionDataset("Country211", _named("train", "valid", "test", val="valid"),
                                     ("country211/{split}",), classnames="country211"),
    "dtd": TorchvisionDataset("DTD", _named("train", "val", "test"), ("dtd/dtd",), kwargs={"partition": 1}),
    "flowers102": TorchvisionDataset("Flowers102", _named("train", "val", "test"), ("flowers-102",),
                                     classnames="flowers102"),
    "food101": TorchvisionDataset("Food101", _named("train", "test"), ("food-101",), spaced=True),
    "fgvc-aircraft": TorchvisionDataset("FGVCAircraft", _named("train", "val", "trainval", "test"),
                                        ("fgvc-aircraft-2013b",), kwargs={"annotation_level": "variant"}),
    "oxford-pets": TorchvisionDataset("OxfordIIITPet", _named("trainval", "test"), ("oxford-iiit-pet",),
                                      kwargs={"target_types": "category"}),
    "stanford-cars": TorchvisionDataset("StanfordCars", _named("train", "test"), ("stanford_cars",)),
    "eurosat": TorchvisionDataset("EuroSAT", {"all": {}}, ("eurosat/2750",), classnames="eurosat"),
    "sun397": TorchvisionDataset("SUN397", {"all": {}}, ("SUN397",), spaced=True),
    "rendered-sst2": TorchvisionDataset("RenderedSST2", _named("train", "val", "test"), ("rendered-sst2",)),
    "fer2013": TorchvisionDataset("FER2013", _named("train", "test"), ("fer2013",), classnames="fer2013"),
    # ImageNet's labelled evaluation split is val (CLIP_benchmark reads "test" as val too). meta.bin and the split
    # folder must exist, or torchvision would parse the devkit and extract the archives into the root.
    "imagenet": TorchvisionDataset("ImageNet", _named("train", "val", test="val"), ("meta.bin", "{split}"),
                                   classnames="imagenet1k"),
}
# Other spellings: torchvision's class names and CLIP_benchmark's dataset names, compared without case, '-' or '_'.
_ALIASES = {"fashionmnist": "fashion-mnist", "flowers": "flowers102", "pets": "oxford-pets",
            "oxfordiiitpet": "oxford-pets", "cars": "stanford-cars", "fgvcaircraft": "fgvc-aircraft",
            "renderedsst2": "rendered-sst2", "imagenet1k": "imagenet", "stanfordcars": "stanford-cars",
            "oxfordpets": "oxford-pets"}


def _squash(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def torchvision_dataset_name(name: str) -> str:
    """Our name for a torchvision dataset (``FashionMNIST``, ``fashion_mnist`` -> ``fashion-mnist``)."""
    squashed = _squash(name)
    for known in TORCHVISION_DATASETS:
        if _squash(known) == squashed:
            return known
    if squashed in _ALIASES:
        return _ALIASES[squashed]
    raise ConfigError(f"torchvision dataset {name!r} is not supported offline (supported: "
                      f"{', '.join(TORCHVISION_DATASETS)})")


def torchvision_data_missing(name: str, root: str, split: str = "test") -> Optional[str]:
    """None when the files torchvision reads for the dataset's split are in `root`, else one line saying which
    are not (for a suite's missing-data report; TorchvisionSource raises it as FileNotFoundError)."""
    name = torchvision_dataset_name(name)
    spec = TORCHVISION_DATASETS[name]
    if split not in spec.splits:
        return None  # not a question of files: TorchvisionSource refuses the split
    needs = spec.needs[split] if isinstance(spec.needs, dict) else spec.needs
    tv_split = str(spec.splits[split].get("split", split))
    absent = [path for path in (need.format(split=tv_split) for need in needs) if not (Path(root) / path).exists()]
    if absent:
        return (f"torchvision dataset {name} not found in {root} (no {', '.join(absent)}); it is read offline, "
                f"never downloaded")
    return None


def _integer_label(label: Any) -> Optional[int]:
    if isinstance(label, bool):
        return None
    try:
        return operator.index(label)
    except TypeError:
        return None


class TorchvisionSource(Source):
    """A torchvision dataset on disk, read offline; records are torchvision's PIL images and int targets.

    `classnames` given here win; else the shipped list of the dataset (see TORCHVISION_DATASETS), else
    torchvision's own `classes`, which needs the dataset built: `classnames` is then read on first use. Units are
    index ranges of `per_unit` items."""

    kind = "zeroshot"
    per_unit = FILES_PER_UNIT

    def __init__(self, name: str, root: str, split: str = "test", classnames: Sequence[str] = (),
                 download: bool = False) -> None:
        super().__init__()
        if download:
            raise ConfigError("TorchvisionSource never downloads: fetch the dataset once (e.g. torchvision's class "
                              "with download=True), then point root at it")
        self.name = torchvision_dataset_name(name)
        self.root = str(root)
        self.split = split
        spec = TORCHVISION_DATASETS[self.name]
        if split not in spec.splits:
            hint = " (torchvision defines no splits: split all reads every image)" if "all" in spec.splits else ""
            raise ConfigError(f"torchvision dataset {self.name}: split {split!r} is not one of "
                              f"{', '.join(spec.splits)}{hint}")
        self._kwargs = {**spec.kwargs, **spec.splits[split]}
        missing = torchvision_data_missing(self.name, self.root, split)
        if missing:
            raise FileNotFoundError(missing)
        self._dataset: Any = None
        self._length: Optional[int] = None
        self._names: list[str] = list(classnames) or (load_classnames(spec.classnames) if spec.classnames else [])

    # `classnames` may need the dataset built (torchvision's own names): resolved on first use.
    @property
    def classnames(self) -> list[str]:
        if not self._names:
            self._load()
        return self._names

    @classnames.setter
    def classnames(self, value: list[str]) -> None:
        self._names = list(value)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_dataset"] = None  # built again where it is read: never pickled into the workers
        return state

    def _load(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        import torchvision.datasets

        spec = TORCHVISION_DATASETS[self.name]
        cls = getattr(torchvision.datasets, spec.cls)
        kwargs = dict(self._kwargs)
        if "download" in inspect.signature(cls).parameters:  # FER2013 and ImageNet have none
            kwargs["download"] = False
        try:
            dataset = cls(self.root, **kwargs)
        except (RuntimeError, OSError) as e:  # torchvision's "Dataset not found or corrupted", a missing file
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            missing = isinstance(e, FileNotFoundError) or "not found" in message.lower()
            raise (FileNotFoundError if missing else DataError)(
                f"torchvision dataset {self.name} in {self.root} cannot be read: {message}") from None
        own = list(getattr(dataset, "classes", None) or [])
        if not self._names:
            if not own:
                raise DataError(f"torchvision dataset {self.name} has no class names: give classnames")
            self._names = ([str(c).replace("_", " ").replace("/", " ") for c in own] if spec.spaced
                           else [str(c) for c in own])
        elif own and len(own) != len(self._names):
            raise DataError(f"torchvision dataset {self.name} in {self.root} has {len(own)} classes, the class "
                            f"names given are {len(self._names)}")
        self._dataset, self._length = dataset, len(dataset)
        return dataset

    def __len__(self) -> int:
        if self._length is None:
            self._load()
        return int(self._length or 0)

    def units(self) -> list[tuple[int, int]]:
        n = len(self)
        return [(start, min(start + self.per_unit, n)) for start in range(0, n, self.per_unit)]

    def read(self, unit: tuple[int, int]) -> Read:
        dataset = self._load()
        classes = len(self.classnames)
        for index in range(unit[0], unit[1]):
            key = f"{self.name}/{self.split}/{index}"
            try:
                image, target = dataset[index]
            except FileNotFoundError as e:
                yield SkipEvent("image_missing", self.root, 1, f"{key}: {e}", key)
                continue
            except Image.DecompressionBombError as e:
                yield SkipEvent("image_too_large", self.root, 1, f"{key}: {e}", key)
                continue
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad image data
                yield SkipEvent("image_unreadable", self.root, 1, f"{key}: {type(e).__name__}: {e}", key)
                continue
            label = _integer_label(target)
            if label is None or not 0 <= label < classes:
                yield SkipEvent("label_invalid", self.root, 1, f"{key}: label {target!r} is not one of the "
                                f"{classes} classes", key)
                continue
            yield Record(key, image, label=label)

    def describe(self) -> str:
        size = f", {self._length} images" if self._length is not None else ""
        return f"torchvision {self.name} ({self.split}) at {self.root}{size}"


@dataclass(frozen=True)
class KarpathyImage:
    """One image of a Karpathy split: its path under the image root and its captions (`problem`: the skip
    reason when it has none to use)."""

    path: str
    captions: tuple[str, ...]
    problem: str = ""


def read_karpathy(annotation_json: str, splits: Sequence[str]) -> list[KarpathyImage]:
    """The images of `splits` in a Karpathy-split file, in the file's order. A file that is not such JSON is a
    DataError naming the file (and the entry)."""
    path = Path(annotation_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (a Karpathy-split annotation file such as "
                                f"dataset_coco.json or dataset_flickr30k.json)")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected an object with an 'images' list (Karpathy's dataset_*.json layout)")
    found, seen_splits = [], set()
    for index, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise DataError(f"{path}: images[{index}] has no 'filename'")
        seen_splits.add(str(entry.get("split")))
        if entry.get("split") not in splits:
            continue
        folder = entry.get("filepath") or ""
        if not isinstance(folder, str):
            raise DataError(f"{path}: images[{index}] has a 'filepath' that is not a string")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"{path}: images[{index}] ({entry['filename']}) has no 'sentences' list")
        raw = [s.get("raw") for s in sentences if isinstance(s, dict) and isinstance(s.get("raw"), str)]
        captions = tuple(text.strip() for text in raw if text.strip())
        problem = "" if captions else ("caption_empty" if raw else "caption_missing")
        found.append(KarpathyImage(f"{folder}/{entry['filename']}" if folder else entry["filename"], captions,
                                   problem))
    if not found:
        raise DataError(f"{path}: no images in split {'+'.join(splits)} (the file's splits: "
                        f"{', '.join(sorted(seen_splits)) or 'none'})")
    return found


class KarpathySource(Source):
    """Image-text retrieval over a Karpathy split: images at ``images_root/<filepath>/<filename>`` (COCO's
    entries name a filepath such as val2014; Flickr30k's do not: ``images_root/<filename>``), captions the
    ``raw`` sentences. `split` is one split or several joined by ``+`` (``train+restval``). A missing image file is
    a counted skip (image_missing)."""

    kind = "retrieval"
    per_unit = FILES_PER_UNIT

    def __init__(self, annotation_json: str, images_root: str, split: str = "test") -> None:
        super().__init__()
        self.annotation_json, self.images_root, self.split = str(annotation_json), str(images_root), split
        self.images = read_karpathy(self.annotation_json, split.split("+"))

    def units(self) -> list[tuple[int, int]]:
        n = len(self.images)
        return [(start, min(start + self.per_unit, n)) for start in range(0, n, self.per_unit)]

    def read(self, unit: tuple[int, int]) -> Read:
        root = Path(self.images_root)
        for image in self.images[unit[0]:unit[1]]:
            if image.problem:
                yield SkipEvent(image.problem, self.annotation_json, 1, f"{image.path}: no caption", image.path)
                continue
            if ".." in Path(image.path).parts or Path(image.path).is_absolute():
                yield SkipEvent("image_missing", self.annotation_json, 1,
                                f"{image.path}: not a path under the image root", image.path)
                continue
            file = root / image.path
            try:
                data = file.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                yield SkipEvent("image_missing", self.images_root, 1, f"{file} does not exist", image.path)
                continue
            except OSError as e:
                yield SkipEvent("image_unreadable", self.images_root, 1, f"{file}: {e}", image.path)
                continue
            yield Record(image.path, data, captions=list(image.captions))

    def describe(self) -> str:
        return (f"Karpathy split {self.split} of {self.annotation_json} ({len(self.images)} images under "
                f"{self.images_root})")
