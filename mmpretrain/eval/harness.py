"""The eval harness: typed task configs in, a flat ``{"<kind>/<name>/<metric>": value}`` dict out.

It only needs a model with ``encode(modality, x, normalize=True)`` (see `EvalModel`), the eval image transform, a
tokenizer and, for audio, the model's audio settings, so the trainer and the CLI call the same `run_eval`.

A task names its modalities: zero-shot classifies `modality` (image or audio) against text prompts; retrieval
runs both ways `between` two modalities (image-text by default, or any two of image, text, audio), matching items
of the same sample, or with `match_key` of the same label (class-level). How each modality is read and embedded
is in eval/modalities.py. A compositional task asks, per image, whether its caption beats minimally changed wrong
ones (SugarCrepe, ARO, Winoground, or our shard layout: `format`), per negative type (eval/compositional/).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from mmpretrain.audio.config import AudioConfig
from mmpretrain.data.shards import expand_shards
from mmpretrain.data.skips import SkipLedger
from mmpretrain.errors import ConfigError, DataError, require
from mmpretrain.eval import compositional
from mmpretrain.eval.compositional.readers import sugarcrepe_files
from mmpretrain.eval.datasets import is_folder, load_retrieval, load_zeroshot
from mmpretrain.eval.modalities import (MODALITIES, EvalInputs, ImageModality, ImageTransform, TextModality,
                                        modality)
from mmpretrain.eval.retrieval import cross_modal_metrics
from mmpretrain.eval.sources import FolderSource, ShardSource, Source
from mmpretrain.eval.stream import StreamResult, stream_features
from mmpretrain.eval.templates import get_templates
from mmpretrain.eval.zeroshot import Tokenizer, build_classifier, zeroshot_metrics
from mmpretrain.negatives.blind import cross_fitted_scorers

# What zero-shot can classify: every modality but text, which gives the class prompts.
ZEROSHOT_MODALITIES = tuple(m for m in MODALITIES if m != "text")
DEFAULT_BETWEEN = ("image", "text")

log = logging.getLogger(__name__)


class EvalModel(Protocol):
    """What the harness uses of a model: per-modality normalized embeddings, and train/eval mode."""

    training: bool

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass
class EvalTaskConfig:
    """One eval set. `name` is the dataset part of the metric keys."""

    name: str = ""                      # dataset name used in metric keys, e.g. "digits"
    kind: Literal["zeroshot", "retrieval", "compositional"] = "zeroshot"
    data: str = ""                      # shard spec (dir/glob/brace) or image folder; compositional: see `format`
    label_key: str = "label"            # zero-shot: .json field, or member (e.g. "cls"), holding the label
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)   # explicit templates, or
    template_set: Optional[str] = None                    # a named set from templates.py
    max_samples: Optional[int] = None  # the first N usable samples; skipped ones do not count
    modality: str = "image"             # zero-shot: what is classified, image or audio
    between: list[str] = field(default_factory=lambda: list(DEFAULT_BETWEEN))  # retrieval: its two modalities
    # retrieval: a .json field (or member) holding a label; a hit is then any item of the same label (class-level,
    # keys <q>_to_<k>_class_R@k), and a sample may hold either modality or both
    match_key: Optional[str] = None
    # compositional: the set's format (one of compositional.FORMATS), its image folder (not for shards; SugarCrepe
    # defaults to <data>/val2017), and the types kept (SugarCrepe subsets, shard or order negative types; all)
    format: Optional[str] = None
    images: Optional[str] = None
    subsets: list[str] = field(default_factory=list)
    # compositional: also report what a text-only trigram model gets (`<type>/blind_acc`), fit on the set's own
    # positives, cross-fitted (SugarCrepe's lesson: a negative that text alone gives away measures nothing)
    blind: bool = True

    def modalities(self) -> list[str]:
        """The towers the task needs: zero-shot its modality and text (the prompts), retrieval its two."""
        if self.kind == "compositional":
            return ["image", "text"]
        return [self.modality, "text"] if self.kind == "zeroshot" else list(self.between)

    def validate(self, label: Optional[str] = None) -> None:
        """`label`: what errors call the task (EvalConfig gives its index too)."""
        label = label or f"eval task {self.name!r}"
        if not self.name:
            raise ConfigError(f"{label}: name is empty (it is used in the metric keys)")
        if self.kind not in ("zeroshot", "retrieval", "compositional"):
            raise ConfigError(f"{label}: kind must be 'zeroshot', 'retrieval' or 'compositional', got {self.kind!r}")
        if not self.data:
            raise ConfigError(f"{label}: data is empty (give a shard spec or a folder)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"{label}: max_samples must be >= 1 or null (all), got {self.max_samples}")
        if self.kind == "compositional":
            self._validate_compositional(label)
            return
        compositional_keys = [k for k in ("format", "images") if getattr(self, k) is not None]
        compositional_keys += ["subsets"] if self.subsets else []
        if compositional_keys:
            verb = "is" if len(compositional_keys) == 1 else "are"
            raise ConfigError(f"{label}: {', '.join(compositional_keys)} {verb} for compositional tasks "
                              f"(kind: compositional)")
        if self.kind == "retrieval":
            self._validate_retrieval(label)
            return
        if self.modality not in ZEROSHOT_MODALITIES:
            raise ConfigError(f"{label}: modality must be one of {', '.join(ZEROSHOT_MODALITIES)} (zero-shot "
                              f"classifies it against text prompts), got {self.modality!r}")
        if list(self.between) != list(DEFAULT_BETWEEN):
            raise ConfigError(f"{label}: between is for retrieval tasks (zero-shot names its modality in modality), "
                              f"got {list(self.between)}")
        if self.match_key is not None:
            raise ConfigError(f"{label}: match_key is for retrieval tasks (zero-shot reads labels by label_key)")
        try:
            templates = task_templates(self)
        except KeyError as err:
            raise ConfigError(f"{label}: {err.args[0]}") from None
        if not templates:
            raise ConfigError(f"{label}: zero-shot needs templates or a template_set")
        if not self.classnames and not is_folder(self.data):
            raise ConfigError(f"{label}: zero-shot on shards needs classnames")

    def _validate_compositional(self, label: str) -> None:
        formats = compositional.FORMATS
        if self.format not in formats:
            raise ConfigError(f"{label}: a compositional task needs format, one of {', '.join(formats)}; "
                              f"got {self.format!r}")
        others = {"classnames": bool(self.classnames), "templates": bool(self.templates),
                  "template_set": self.template_set is not None, "match_key": self.match_key is not None,
                  "between": list(self.between) != list(DEFAULT_BETWEEN), "modality": self.modality != "image"}
        if any(others.values()):
            raise ConfigError(f"{label}: {', '.join(k for k, v in others.items() if v)} is not a compositional "
                              f"task's key (it scores images against captions: format, data, images, subsets)")
        if self.format not in ("sugarcrepe", "shards") and not self.images:
            raise ConfigError(f"{label}: format {self.format} needs images, the folder its annotations name "
                              f"images in")
        if self.format == "shards" and self.images:
            raise ConfigError(f"{label}: format shards reads its images from the shards; images must be unset")
        if self.subsets and self.format in ("aro-relation", "aro-attribution", "winoground"):
            raise ConfigError(f"{label}: subsets is for formats sugarcrepe, shards, coco-order and flickr-order "
                              f"(format {self.format} has fixed types)")
        if any(not isinstance(s, str) or not s.strip() or "/" in s for s in self.subsets):
            raise ConfigError(f"{label}: subsets must be type names (no empty ones, no '/'), got {self.subsets}")

    def _validate_retrieval(self, label: str) -> None:
        between = list(self.between)
        if len(between) != 2 or len(set(between)) != 2 or any(m not in MODALITIES for m in between):
            raise ConfigError(f"{label}: between must name two different modalities of {', '.join(MODALITIES)}, "
                              f"got {between}")
        if self.modality != "image":
            raise ConfigError(f"{label}: modality is for zero-shot tasks (retrieval names its two modalities in "
                              f"between), got {self.modality!r}")
        if self.match_key is not None and not self.match_key.strip():
            raise ConfigError(f"{label}: match_key is empty (null: match items of the same sample)")


@dataclass
class EvalConfig:
    """The eval tasks and how often the trainer runs them."""

    tasks: list[EvalTaskConfig] = field(default_factory=list)
    batch_size: int = 256
    every_steps: int = 0                # 0 = only at the end of training
    # DataLoader workers that read and decode image sets (streamed: only features are kept); 0 reads in-process
    workers: int = 2

    def validate(self) -> None:
        """Fail before any work is done when a task cannot run; each error names the task."""
        seen: set[tuple[str, str]] = set()
        for index, task in enumerate(self.tasks):
            label = f"eval task {index} ({task.name!r})"
            task.validate(label)
            if (task.kind, task.name) in seen:
                raise ConfigError(f"{label}: another {task.kind} task has the same name")
            seen.add((task.kind, task.name))
        require(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")
        require(self.every_steps >= 0, "eval.every_steps", self.every_steps, ">= 0 (0: only at the end)")
        require(self.workers >= 0, "eval.workers", self.workers, ">= 0 (0: read in the evaluating process)")


def task_templates(task: EvalTaskConfig) -> list[str]:
    """The task's explicit templates followed by its named set's (either may be empty)."""
    named = get_templates(task.template_set) if task.template_set else []
    return list(task.templates) + named


def check_task_modalities(config: EvalConfig, towers: Sequence[str]) -> None:
    """Every task's modalities are towers of the model (`towers`, e.g. model.towers): one line naming the first
    task that needs another."""
    for index, task in enumerate(config.tasks):
        missing = [m for m in task.modalities() if m not in towers]
        if missing:
            what = {"zeroshot": f"zero-shot {task.modality}", "compositional": "compositional (image-text)"}.get(
                task.kind, f"retrieval between {' and '.join(task.between)}")
            raise ConfigError(f"eval task {index} ({task.name!r}): {what} needs the {' and '.join(missing)} "
                              f"tower, which the model lacks (model.towers = {list(towers)})")


def check_task_data(config: EvalConfig, towers: Optional[Sequence[str]] = None) -> None:
    """Every task's data exists (and with `towers`, its modalities are the model's): checked when training starts,
    not minutes later at the first evaluation."""
    if towers is not None:
        check_task_modalities(config, towers)
    for task in config.tasks:
        if task.kind == "compositional":
            check_compositional_data(task)
        elif not is_folder(task.data):
            try:
                expand_shards(task.data)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"eval task {task.name!r}: {err}") from None


def check_compositional_data(task: EvalTaskConfig) -> None:
    """A compositional task's annotation file(s) and image folder exist (FileNotFoundError naming the task)."""
    def missing(what: str, path: str) -> FileNotFoundError:
        return FileNotFoundError(f"eval task {task.name!r}: {what} {path} does not exist")

    if task.format == "shards":
        try:
            expand_shards(task.data)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"eval task {task.name!r}: {err}") from None
        return
    if not Path(task.data).exists():
        raise missing("data", task.data)
    if task.format == "sugarcrepe":
        try:
            files = sugarcrepe_files(task.data, task.subsets)
        except DataError as err:
            raise FileNotFoundError(f"eval task {task.name!r}: {err}") from None
        for file in files:
            if not file.is_file():
                raise missing("SugarCrepe subset file", str(file))
        data_dir = Path(task.data) if Path(task.data).is_dir() else Path(task.data).parent
        images = task.images or str(data_dir / "val2017")
    else:
        images = task.images or ""
    if not Path(images).is_dir():
        raise missing("image folder", images)


def encode_images(model: EvalModel, images: Sequence[Any], transform: ImageTransform, batch_size: int,
                  device: str | torch.device, progress: bool = False, desc: str = "images") -> torch.Tensor:
    """Normalized image embeddings [N, D] on CPU, computed `batch_size` images at a time."""
    return ImageModality(EvalInputs(image_transform=transform)).encode(model, images, batch_size, device, progress,
                                                                      desc)


def encode_texts(model: EvalModel, texts: Sequence[str], tokenizer: Tokenizer, batch_size: int,
                 device: str | torch.device, progress: bool = False, desc: str = "texts") -> torch.Tensor:
    """Normalized text embeddings [M, D] on CPU, computed `batch_size` texts at a time."""
    return TextModality(EvalInputs(tokenizer=tokenizer)).encode(model, texts, batch_size, device, progress, desc)


def _describe_skips(skips: SkipLedger) -> str:
    """Counts by reason, most common first, and one example: "image_unreadable 2, label_invalid 1 (e.g. ...)"."""
    reasons = skips.by_reason.most_common()
    counts = ", ".join(f"{reason} {count:,}" for reason, count in reasons)
    example = next((skips.last_detail[r] for r, _ in reasons if r in skips.last_detail), "")
    return f"{counts} (e.g. {example})" if example else counts


def _count_skips(task: EvalTaskConfig, skips: SkipLedger) -> float:
    """The task's skipped-sample count, logged with its reasons; a task with no usable sample is an error."""
    skipped = sum(skips.by_reason.values())
    if skips.delivered == 0:
        found = f"skipped {skipped:,}: {_describe_skips(skips)}" if skipped else "no samples found"
        raise DataError(f"eval task {task.kind}/{task.name}: no usable sample in {task.data} ({found})")
    if skipped:
        log.warning("eval task %s/%s: skipped %s bad samples, evaluated %s: %s", task.kind, task.name,
                    f"{skipped:,}", f"{skips.delivered:,}", _describe_skips(skips))
    return float(skipped)


@dataclass
class _Streamed:
    """The one model the harness evaluates, as the streaming reader takes models (a label and the model)."""

    model: EvalModel
    label: str = "model"


def _stream_source(task: EvalTaskConfig) -> Optional[Source]:
    """The streaming reader of an image task (eval/stream.py: read and decoded in workers, only features
    kept), or None for what only the in-memory readers handle: audio, class-level or folder retrieval."""
    if task.kind == "zeroshot" and task.modality == "image":
        return FolderSource(task.data, task.classnames) if is_folder(task.data) else ShardSource(
            task.data, "zeroshot", task.classnames, task.label_key)
    if (task.kind == "retrieval" and list(task.between) == ["image", "text"] and task.match_key is None
            and not is_folder(task.data)):
        return ShardSource(task.data, "retrieval")
    return None


def _stream(task: EvalTaskConfig, source: Source, model: EvalModel, inputs: EvalInputs, batch_size: int,
            workers: int, device: str | torch.device, progress: bool) -> tuple[StreamResult, float]:
    assert inputs.image_transform is not None  # checked with the task's modalities
    result = stream_features(source, [_Streamed(model)], inputs.image_transform, batch_size, workers,
                             torch.device(device), progress, f"{task.name} image", task.max_samples)
    return result, _count_skips(task, result.skips)


def _run_zeroshot(model: EvalModel, inputs: EvalInputs, task: EvalTaskConfig, batch_size: int,
                  device: str | torch.device, progress: bool, workers: int = 0) -> dict[str, float]:
    assert inputs.tokenizer is not None  # checked with the task's modalities
    source = _stream_source(task)
    if source is not None:
        result, skipped = _stream(task, source, model, inputs, batch_size, workers, device, progress)
        classifier = build_classifier(model, inputs.tokenizer, source.classnames, task_templates(task), batch_size,
                                      device)
        return {**zeroshot_metrics(result.features["model"], torch.tensor(result.labels), classifier),
                "skipped": skipped}
    classified = modality(task.modality, inputs)
    data = load_zeroshot(task.data, task.classnames, task.label_key, task.max_samples, classified)
    skipped = _count_skips(task, data.skips)
    classifier = build_classifier(model, inputs.tokenizer, data.classnames, task_templates(task), batch_size, device)
    features = classified.encode(model, data.items, batch_size, device, progress, f"{task.name} {task.modality}")
    return {**zeroshot_metrics(features, torch.tensor(data.labels), classifier), "skipped": skipped}


def _run_retrieval(model: EvalModel, inputs: EvalInputs, task: EvalTaskConfig, batch_size: int,
                   device: str | torch.device, progress: bool, workers: int = 0) -> dict[str, float]:
    source = _stream_source(task)
    if source is not None:
        assert inputs.tokenizer is not None  # checked with the task's modalities
        result, skipped = _stream(task, source, model, inputs, batch_size, workers, device, progress)
        texts = [caption for captions in result.captions for caption in captions]
        owner = torch.tensor([i for i, captions in enumerate(result.captions) for _ in captions])
        text_features = encode_texts(model, texts, inputs.tokenizer, batch_size, device, progress,
                                     f"{task.name} text")
        images = result.features["model"]
        return {**cross_modal_metrics("image", images, torch.arange(len(images)), "text", text_features, owner),
                "skipped": skipped}
    first, second = (modality(name, inputs) for name in task.between)
    data = load_retrieval(task.data, task.max_samples, (first, second), task.match_key)
    skipped = _count_skips(task, data.skips)
    class_of = {label: index for index, label in enumerate(dict.fromkeys(data.labels))}
    features, groups = [], []
    for side in (first, second):
        items, samples = data.items[side.name], data.samples[side.name]
        if not items:  # class-level sets may hold one modality per sample; each side needs some
            raise DataError(f"eval task {task.kind}/{task.name}: no usable sample in {task.data} holds "
                            f"{side.name} (a {'/'.join(side.extensions)} member)")
        if side.name == "text":  # a sample's captions are separate keys (or queries) of that sample
            samples = [sample for captions, sample in zip(items, samples) for _ in captions]
            items = [caption for captions in items for caption in captions]
        if task.match_key is not None:
            samples = [class_of[data.labels[sample]] for sample in samples]
        features.append(side.encode(model, items, batch_size, device, progress, f"{task.name} {side.name}"))
        groups.append(torch.tensor(samples))
    metrics = cross_modal_metrics(first.name, features[0], groups[0], second.name, features[1], groups[1],
                                  suffix="_class" if task.match_key is not None else "")
    return {**metrics, "skipped": skipped}


def set_blind_scorer(data: compositional.CompositionalData) -> compositional.BlindScorer:
    """A blind scorer for a compositional set: a Kneser-Ney trigram model of its own positive captions, in two
    folds by caption, so that no positive is scored by a model that saw it (which would flatter it)."""
    positives = sorted({item.positive for item in data.choices})
    scorers = cross_fitted_scorers([(p, [p]) for p in positives], folds=2 if len(positives) > 1 else 1)

    def prefers_positive(positive: str, negative: str) -> bool:
        score = scorers(positive)
        return score(positive) > score(negative)
    return prefers_positive


def _run_compositional(model: EvalModel, inputs: EvalInputs, task: EvalTaskConfig, batch_size: int,
                       device: str | torch.device, progress: bool,
                       blind_scorer: Optional[compositional.BlindScorer] = None, workers: int = 0
                       ) -> dict[str, float]:
    del workers  # compositional sets are small and read in memory: each image and caption is embedded once
    assert task.format is not None  # validated
    data = compositional.read_compositional(task.format, task.data, task.images, task.subsets, task.max_samples)
    if blind_scorer is None and task.blind:
        blind_scorer = set_blind_scorer(data)
    images, texts = modality("image", inputs), modality("text", inputs)
    metrics = compositional.evaluate(model, data, images, texts, batch_size, device,  # type: ignore[arg-type]
                                     task.data, blind_scorer if task.format != "winoground" else None, progress,
                                     task.name)
    skipped = _count_skips(task, data.skips)
    return {**metrics, "skipped": skipped}


def run_eval(model: EvalModel, image_transform: Optional[ImageTransform], tokenizer: Optional[Tokenizer],
             config: EvalConfig, device: str | torch.device = "cpu", progress: bool = True,
             failures: Optional[dict[str, str]] = None, audio: Optional[AudioConfig] = None,
             blind_scorer: Optional[compositional.BlindScorer] = None) -> dict[str, float]:
    """Run every task and return the flat metric dict, e.g. ``{"zeroshot/digits/top1": 0.93, ...}``.

    `audio` is the model's audio settings (``model.audio``), needed by tasks that read audio. Before any data is
    read, the config is validated, and a task needing a tower the model lacks (``model.modalities``) or an input
    not given here is refused with one ConfigError line naming it.

    Each task also reports ``<kind>/<name>/skipped``, its count of bad samples (and samples of broken shards)
    passed over; a task with no usable sample raises DataError naming it.

    With `failures` (a dict to fill), a task that raises while loading or scoring is recorded instead: its
    ``<kind>/<name>/failed`` is 1, `failures["<kind>/<name>"]` holds the error in one line (for the caller to
    report), and the other tasks still run.

    A compositional task reports ``compositional/<name>/<type>/acc`` per negative type and ``.../acc`` (the mean
    over types; Winoground: text, image and group, and acc the group score). With `blind_scorer`
    (``(positive, negative) -> bool``, True when it picks the positive from the captions alone), each choice set
    also reports ``<type>/blind_acc`` and ``blind_acc``: what a text-only model gets there.

    The model runs in eval mode without gradients and gets its previous train/eval mode back afterwards.
    """
    config.validate()
    towers = getattr(model, "modalities", None)
    if towers is not None:
        check_task_modalities(config, towers)
    inputs = EvalInputs(image_transform, tokenizer, audio)
    for index, task in enumerate(config.tasks):
        for name in task.modalities():
            try:
                modality(name, inputs)
            except ConfigError as err:
                raise ConfigError(f"eval task {index} ({task.name!r}): {err}") from None
    runners: dict[str, Callable[..., dict[str, float]]] = {
        "zeroshot": _run_zeroshot, "retrieval": _run_retrieval,
        "compositional": functools.partial(_run_compositional, blind_scorer=blind_scorer)}
    results: dict[str, float] = {}
    was_training = model.training
    model.train(False)
    try:
        with torch.no_grad():
            for task in tqdm(config.tasks, desc="eval", disable=not progress):
                try:
                    metrics = runners[task.kind](model, inputs, task, config.batch_size, device, progress,
                                                 workers=config.workers)
                except Exception as err:  # noqa: BLE001 - one task's failure must not lose the others' results
                    if failures is None:
                        raise
                    failures[f"{task.kind}/{task.name}"] = " ".join(f"{type(err).__name__}: {err}".split())
                    metrics = {"failed": 1.0}
                results.update({f"{task.kind}/{task.name}/{name}": value for name, value in metrics.items()})
    finally:
        model.train(was_training)
    return results


def format_table(results: dict[str, float]) -> str:
    """An aligned two-column text table of the metrics, sorted by key: scores to four decimals, counts whole."""
    if not results:
        return "(no eval results)"
    values = {key: _format_value(key, value) for key, value in sorted(results.items())}
    key_width = max(len("metric"), *(len(key) for key in values))
    value_width = max(len("value"), *(len(v) for v in values.values()))
    lines = [f"{'metric':<{key_width}}  {'value':>{value_width}}", f"{'-' * key_width}  {'-' * value_width}"]
    lines += [f"{key:<{key_width}}  {value:>{value_width}}" for key, value in values.items()]
    return "\n".join(lines)


def _format_value(key: str, value: float) -> str:
    # A skip count is a number of samples: "3", not "3.0000" beside the fractions.
    return f"{value:,.0f}" if key.endswith(("/skipped", "/failed")) else f"{value:.4f}"


def write_results(results: dict[str, float], config: EvalConfig | dict[str, Any] | None,
                  path: str | Path) -> Path:
    """Write the flat metrics as JSON and the config that produced them beside it as ``eval_config.yaml``.

    `path` is the JSON file, or a directory to hold ``results.json``. Returns the JSON path.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: float(v) for k, v in results.items()}, indent=2, sort_keys=True) + "\n")
    if config is not None:
        plain = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
        (path.parent / "eval_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    return path
