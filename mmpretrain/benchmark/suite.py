"""Benchmark suites: a YAML list of tasks (name, kind, format, path, metric options) with paths under a
`benchmark_root` the user sets.

    name: quick
    benchmark_root: ${oc.env:MMP_BENCHMARK_ROOT,benchmark_data}
    tasks:
      - {name: cifar10, kind: zeroshot, format: clip_benchmark, path: "${benchmark_root}/wds_vtab-cifar10",
         main_metric: acc1}

Overrides (`benchmark_root=/data/bench`, `tasks.0.max_samples=100`) are merged before interpolation, so a root
set on the command line reaches every path. A task whose data are absent is *missing* (reported, not failed)
unless the run is strict; a task that is present but malformed is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpretrain.errors import ConfigError

KINDS = ("zeroshot", "retrieval", "compositional")
STREAMED_FORMATS = ("clip_benchmark", "shards", "folder", "torchvision", "karpathy")
# Compositional formats are scored by the eval harness (eval/compositional), one model at a time.
COMPOSITIONAL_FORMATS = ("sugarcrepe", "aro-relation", "aro-attribution", "coco-order", "flickr-order",
                         "winoground", "shards")
# CLIP_benchmark's metric names, which the table and the average use.
ZEROSHOT_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass
class SuiteTask:
    """One benchmark task. `path` is a dataset root (clip_benchmark, torchvision), a shard spec (shards), a class
    folder (folder), an annotation file (karpathy, compositional formats)."""

    name: str
    kind: str = "zeroshot"
    format: str = "clip_benchmark"
    path: str = ""
    main_metric: Optional[str] = None        # default: acc1 (zero-shot), mean_recall@1 (retrieval), acc
    split: str = "test"
    dataset: Optional[str] = None            # torchvision: the dataset's name (cifar10, stl10, ...)
    images: Optional[str] = None             # karpathy and compositional formats: the image root
    classnames: Any = None                   # a list, a shipped list's name, or a file (one per line)
    templates: Any = None                    # a list, a template-set name, or a file (one per line, {c} or {})
    label_key: str = "label"                 # shards: the .json field (or member) holding the label
    recall_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    max_samples: Optional[int] = None        # the first N usable samples (in unit order)
    subsets: list[str] = field(default_factory=list)   # compositional: the types kept

    @property
    def main(self) -> str:
        if self.main_metric:
            return self.main_metric
        return {"zeroshot": "acc1", "retrieval": "mean_recall@1"}.get(self.kind, "acc")

    def validate(self, label: str) -> None:
        if not self.name or not _NAME.match(self.name):
            raise ConfigError(f"{label}: name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"{label}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        formats = COMPOSITIONAL_FORMATS if self.kind == "compositional" else STREAMED_FORMATS
        if self.format not in formats:
            raise ConfigError(f"{label}: a {self.kind} task's format must be one of {', '.join(formats)}, "
                              f"got {self.format!r}")
        if not self.path:
            raise ConfigError(f"{label}: path is empty")
        if self.format == "torchvision" and not self.dataset:
            raise ConfigError(f"{label}: format torchvision needs dataset (e.g. cifar10)")
        if self.format == "karpathy" and (self.kind != "retrieval" or not self.images):
            raise ConfigError(f"{label}: format karpathy is a retrieval set and needs images (the image root)")
        if self.kind == "zeroshot" and self.format in ("shards", "torchvision", "folder") and not self.templates:
            raise ConfigError(f"{label}: format {self.format} carries no prompt templates: give templates (a list, "
                              f"a template-set name or a file)")
        if self.kind == "zeroshot" and self.format == "shards" and not self.classnames:
            raise ConfigError(f"{label}: zero-shot on shards needs classnames")
        if not self.recall_k or any(k < 1 for k in self.recall_k):
            raise ConfigError(f"{label}: recall_k must be positive integers, got {self.recall_k}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"{label}: max_samples must be >= 1 or null, got {self.max_samples}")


@dataclass
class Suite:
    name: str
    tasks: list[SuiteTask]
    source: str = ""

    def select(self, names: Sequence[str]) -> "Suite":
        """Only the named tasks (in the suite's order); an unknown name is an error listing the known ones."""
        unknown = [n for n in names if n not in {t.name for t in self.tasks}]
        if unknown:
            raise ConfigError(f"--tasks: {', '.join(unknown)} not in suite {self.name!r} (its tasks: "
                              f"{', '.join(t.name for t in self.tasks)})")
        return Suite(self.name, [t for t in self.tasks if t.name in names], self.source)


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    """Read a suite file, apply `key=value` overrides, resolve interpolations and check every task."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file {path} does not exist")
    try:
        raw = OmegaConf.load(path)
        if overrides:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
        plain = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    if not isinstance(plain, dict) or not isinstance(plain.get("tasks"), list) or not plain["tasks"]:
        raise ConfigError(f"{path}: a suite needs a non-empty 'tasks' list")
    known = set(SuiteTask.__dataclass_fields__)
    tasks, seen = [], set()
    for index, entry in enumerate(plain["tasks"]):
        label = f"{path.name}: task {index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{label}: each task is a mapping (name, kind, format, path, ...), got {entry!r}")
        label = f"{path.name}: task {index} ({entry.get('name')!r})"
        extra = sorted(set(entry) - known)
        if extra:
            raise ConfigError(f"{label}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")
        task = SuiteTask(**{k: v for k, v in entry.items()})
        task.validate(label)
        if task.name in seen:
            raise ConfigError(f"{label}: another task has the same name")
        seen.add(task.name)
        tasks.append(task)
    return Suite(str(plain.get("name") or path.stem), tasks, str(path))


def data_present(task: SuiteTask) -> Optional[str]:
    """None when the task's data are on disk, else why not (the task is then reported missing)."""
    needed = [task.path] + ([task.images] if task.images else [])
    if task.format == "shards":
        from mmpretrain.data.shards import expand_shards
        try:
            expand_shards(task.path)
        except (FileNotFoundError, ValueError) as e:
            return str(e)
        needed = needed[1:]
    for item in needed:
        if not Path(item).exists():
            return f"{item} does not exist"
    if task.format == "torchvision":
        from mmpretrain.benchmark.sources_files import torchvision_data_missing
        return torchvision_data_missing(str(task.dataset), task.path, task.split)
    if task.format == "clip_benchmark" and not (Path(task.path) / task.split / "nshards.txt").is_file():
        return f"{Path(task.path) / task.split / 'nshards.txt'} does not exist (CLIP_benchmark's layout)"
    return None
