"""Curation stages: a registry of small typed parts, each deciding from the features table which samples go.

A config lists stages in order (`stages: [{type: basic_filter, ...}, {type: embed, ...}, ...]`). Every stage sees
only the samples the stages before it kept, so "top 30% by CLIP score" means 30% of what the basic filters left.

A stage has a *role*:
- ``filter``: ``fit(ctx)`` computes whatever it needs from the whole surviving set (a score threshold, entry
  counts, the duplicate pairs; nothing for a per-sample filter), then ``apply(table)`` names a drop reason per
  row (None: kept) from that table alone. Pure given the fitted state, so any worker can apply it to any part.
- ``embed``: computes the ``image_emb`` and ``clip_score`` columns in the analyse phase (curate/analyse.py).
- ``transform``: keeps every sample and adds members when the output is written (hard negatives).
- ``write``: the last stage, how the output shards are cut.

To add a stage: subclass `Stage`, decorate it with ``@register_stage("name")``, give it typed dataclass fields
(they are the YAML keys), and import its module in curate/__init__.py. docs/CURATION.md lists the stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from mmpretrain.curate.table import numbers, strings
from mmpretrain.errors import ConfigError

T = TypeVar("T")


class FitContext(Protocol):
    """What a stage's `fit` may use: the surviving samples, reached only through Ray (never the driver's memory)."""

    seed: int
    work_dir: Path

    def over_parts(self, fn: Callable[[pa.Table], T]) -> list[T]:
        """`fn(survivors of one features part)` on a Ray worker, for every part; the (small) results."""

    def survivors(self, fn: Callable[[pa.Table], pa.Table]) -> Any:
        """A Ray Dataset of `fn(survivors of each part)` rows, for stages that shuffle (dedup groups by cluster)."""

    def eval_embeddings(self, specs: Sequence[str]) -> np.ndarray:
        """The image embeddings of evaluation shard sets, computed in the analyse phase by the embed stage."""


@dataclass
class StageResult:
    """A stage's verdict on a table: a drop reason per row (None: kept) and score columns to record."""

    reasons: list[Optional[str]]
    scores: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Stage:
    type: ClassVar[str] = ""
    role: ClassVar[str] = "filter"
    per_sample: ClassVar[bool] = True      # decides each row from the row alone (no fit over the set)
    needs_embedding: ClassVar[bool] = False
    score_columns: ClassVar[tuple[str, ...]] = ()   # float32 columns its StageResult.scores fills in

    def check(self, label: str) -> None:
        """Raise a one-line ConfigError for values out of range; `label` names the stage in the config."""

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Learn what `apply` needs from the surviving set; returns what to report of it (e.g. the threshold)."""
        return {}

    def apply(self, table: pa.Table) -> StageResult:
        return StageResult([None] * table.num_rows)

    def members(self, key: str, captions: list[str]) -> dict[str, bytes]:
        """Members a transform stage adds to a kept sample when it is written."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The stage's settings as the config resolved them: reported in the summary and hashed into the phase
        fingerprints, so it must name everything that changes the stage's decisions."""
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}}


STAGES: dict[str, type[Stage]] = {}
S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    def add(cls: S) -> S:
        if name in STAGES:
            raise ValueError(f"stage type {name!r} is registered twice")
        cls.type = name
        STAGES[name] = cls
        return cls
    return add


def absolute_model_spec(spec: str) -> str:
    """A model path (or the pretrained file of `name:file`) made absolute, so every Ray worker finds it."""
    if Path(spec).exists():
        return str(Path(spec).absolute())
    name, sep, weights = spec.partition(":")
    if sep and Path(weights).exists():
        return f"{name}:{Path(weights).absolute()}"
    return spec


def absolute_spec(spec: str) -> str:
    """A shard spec (path, glob, brace pattern) made absolute against the working directory; URLs unchanged."""
    return spec if "://" in spec or spec.startswith("pipe:") or Path(spec).is_absolute() else str(Path.cwd() / spec)


def require(ok: bool, label: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{label}: {message}")


def parse_stages(entries: Sequence[Mapping[str, Any]], source: str) -> list[Stage]:
    """Build and check the stage list of a config; one-line errors naming the stage."""
    if not entries:
        raise ConfigError(f"{source}: 'stages' is empty; list at least an embed or filter stage and a write stage")
    stages: list[Stage] = []
    for index, entry in enumerate(entries):
        label = f"{source}: stages[{index}]"
        if not isinstance(entry, Mapping) or "type" not in entry:
            raise ConfigError(f"{label}: each stage is a mapping with a 'type' (one of {', '.join(sorted(STAGES))})")
        kind = entry["type"]
        if kind not in STAGES:
            raise ConfigError(f"{label}: unknown stage type {kind!r} (known: {', '.join(sorted(STAGES))})")
        cls = STAGES[kind]
        label = f"{source}: stages[{index}] ({kind})"
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        extra = sorted(set(entry) - known - {"type"})
        if extra:
            raise ConfigError(f"{label}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")
        values = {k: v for k, v in entry.items() if k != "type"}
        _check_types(cls, values, label)
        stage = cls(**values)
        stage.check(label)
        stages.append(stage)
    _check_order(stages, source)
    return stages


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _check_types(cls: type[Stage], values: dict[str, Any], label: str) -> None:
    """Each value against its field's annotation (int, float, bool, str, Optional[...], list[str]); `Any` passes."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints[name]
        args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Union and type(None) in args:  # Optional[X]
            if value is None:
                continue
            hint = next(a for a in args if a is not type(None))
        if hint is Any:
            continue
        if typing.get_origin(hint) is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            accepted = _SCALARS.get(hint, (object,))
            ok = isinstance(value, accepted) and (hint is bool or not isinstance(value, bool))
        if not ok:
            expected = getattr(hint, "__name__", str(hint)).replace("list", "list of strings")
            raise ConfigError(f"{label}: {name} must be {expected}, got {value!r}")


def _check_order(stages: list[Stage], source: str) -> None:
    roles = [s.role for s in stages]
    if roles.count("write") != 1 or roles[-1] != "write":
        raise ConfigError(f"{source}: the last stage must be the one 'write' stage (how output shards are cut)")
    if roles.count("embed") > 1:
        raise ConfigError(f"{source}: at most one 'embed' stage")
    embed_at = roles.index("embed") if "embed" in roles else None
    for index, stage in enumerate(stages):
        if stage.needs_embedding and (embed_at is None or index < embed_at):
            raise ConfigError(f"{source}: stages[{index}] ({stage.type}) needs embeddings: put an 'embed' stage "
                              "before it")


# --- basic filters ------------------------------------------------------------------------------------------

@register_stage("basic_filter")
@dataclass
class BasicFilter(Stage):
    """Caption length and characters, image size and aspect ratio: DataComp's "basic filtering", from the
    features table (image sizes come from the header; nothing is decoded again)."""

    min_caption_words: int = 1
    max_caption_words: Optional[int] = None
    min_caption_chars: int = 1
    max_caption_chars: Optional[int] = None
    min_alpha_fraction: float = 0.0   # letters / non-space characters: drops "IMG_2041.JPG", "$$$ 50% $$$"
    min_image_side: int = 1
    max_image_side: Optional[int] = None
    max_aspect_ratio: Optional[float] = None

    def check(self, label: str) -> None:
        require(self.min_caption_words >= 0 and self.min_caption_chars >= 0, label, "minimums must be >= 0")
        require(0.0 <= self.min_alpha_fraction <= 1.0, label, "min_alpha_fraction must be in [0, 1]")
        require(self.min_image_side >= 1, label, "min_image_side must be >= 1")
        require(self.max_aspect_ratio is None or self.max_aspect_ratio >= 1, label, "max_aspect_ratio must be >= 1")
        for low, high, name in ((self.min_caption_words, self.max_caption_words, "caption_words"),
                                (self.min_caption_chars, self.max_caption_chars, "caption_chars"),
                                (self.min_image_side, self.max_image_side, "image_side")):
            require(high is None or high >= low, label, f"max_{name} must be >= min_{name}")

    def reason(self, caption: str, width: int, height: int) -> Optional[str]:
        """The first rule a sample breaks, or None (pure: the unit tests call it directly)."""
        words = len(caption.split())
        if words < self.min_caption_words or len(caption.strip()) < self.min_caption_chars:
            return "caption_too_short"
        if ((self.max_caption_words is not None and words > self.max_caption_words)
                or (self.max_caption_chars is not None and len(caption) > self.max_caption_chars)):
            return "caption_too_long"
        visible = [c for c in caption if not c.isspace()]
        if visible and sum(c.isalpha() for c in visible) / len(visible) < self.min_alpha_fraction:
            return "caption_characters"
        short, long = min(width, height), max(width, height)
        if short < self.min_image_side:
            return "image_too_small"
        if self.max_image_side is not None and long > self.max_image_side:
            return "image_too_large"
        if self.max_aspect_ratio is not None and long / short > self.max_aspect_ratio:
            return "aspect_ratio"
        return None

    def apply(self, table: pa.Table) -> StageResult:
        captions = strings(table, "caption")
        widths, heights = numbers(table, "width", np.int64), numbers(table, "height", np.int64)
        return StageResult([self.reason(c, int(w), int(h)) for c, w, h in zip(captions, widths, heights)])


# --- the model stage and the writer: configuration only; curate/analyse.py and curate/write.py run them ------

@register_stage("embed")
@dataclass
class Embed(Stage):
    """Image and text embeddings with any model the trainer can load: a run directory, an export, or an
    open_clip name with a local pretrained file (`mmpretrain/benchmark/models.py`), on Ray actors."""

    role: ClassVar[str] = "embed"
    model: str = ""
    batch_size: int = 256
    actors: Optional[int] = None          # default: one per CPU of the Ray cluster (or per GPU when gpus > 0)
    gpus_per_actor: float = 0.0           # > 0 places the actors on GPUs (and autocasts to bf16)
    threads_per_actor: int = 1            # torch threads in each actor (its CPU reservation)
    rows_per_block: int = 256             # decoded images per Ray Data block (bounds the memory in flight)

    def check(self, label: str) -> None:
        require(bool(self.model), label, "'model' is required: a run directory, an export directory, or an "
                                         "open_clip name[:pretrained file]")
        require(self.batch_size >= 1 and self.rows_per_block >= 1, label, "batch_size and rows_per_block must be >= 1")
        require(self.actors is None or self.actors >= 1, label, "actors must be >= 1")
        require(self.gpus_per_actor >= 0 and self.threads_per_actor >= 1, label,
                "gpus_per_actor must be >= 0 and threads_per_actor >= 1")
        self.model = absolute_model_spec(self.model)


@register_stage("write")
@dataclass
class Write(Stage):
    """Output shards: kept samples copied byte for byte, `samples_per_shard` to a shard within each input group."""

    role: ClassVar[str] = "write"
    samples_per_shard: int = 1000
    prefix: str = "shard"

    def check(self, label: str) -> None:
        require(self.samples_per_shard >= 1, label, "samples_per_shard must be >= 1")
        require(bool(self.prefix) and "/" not in self.prefix and "." not in self.prefix, label,
                "prefix must be a plain file-name part")


# --- CLIP score -----------------------------------------------------------------------------------------------

HISTOGRAM_BINS = 4096


@register_stage("clip_score")
@dataclass
class ClipScore(Stage):
    """Keep samples whose image-caption cosine is at least `min_score`, or exactly the `top_fraction` best of the
    whole surviving set (DataComp's CLIP-score filter). The cut is global and exact: a histogram of every part's
    scores finds the bin holding it, then only that bin's (score, tie-break) pairs are gathered and sorted. Equal
    scores at the cut are ordered by a hash of (shard, key), so exactly ceil(top_fraction x n) samples stay."""

    per_sample: ClassVar[bool] = False
    needs_embedding: ClassVar[bool] = True
    min_score: Optional[float] = None
    top_fraction: Optional[float] = None
    threshold: Optional[float] = field(default=None, init=False)  # fitted
    tie_break: Optional[int] = field(default=None, init=False)    # fitted: at the threshold, keep hashes <= this

    def check(self, label: str) -> None:
        require((self.min_score is None) != (self.top_fraction is None), label,
                "give exactly one of min_score and top_fraction")
        require(self.top_fraction is None or 0.0 < self.top_fraction <= 1.0, label, "top_fraction must be in (0, 1]")
        require(self.min_score is None or -1.0 <= self.min_score <= 1.0, label, "min_score must be in [-1, 1]")

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        if self.top_fraction is None:
            self.threshold = float(self.min_score)  # type: ignore[arg-type]
            return {"threshold": self.threshold}
        histograms = ctx.over_parts(_score_histogram)
        total = int(sum(h.sum() for h in histograms))
        keep = math.ceil(self.top_fraction * total)
        if keep == 0:
            self.threshold = math.inf
            return {"threshold": None, "scored": 0}
        counts = np.sum(histograms, axis=0)
        above = np.cumsum(counts[::-1])[::-1]      # above[b]: scores in bin b or higher
        bin_index = int(np.nonzero(above >= keep)[0].max())
        rank_in_bin = keep - (int(above[bin_index + 1]) if bin_index + 1 < len(above) else 0)
        pairs = sorted((p for part in ctx.over_parts(_ScoresInBin(bin_index)) for p in part),
                       key=lambda pair: (-pair[0], pair[1]))
        self.threshold, self.tie_break = float(pairs[rank_in_bin - 1][0]), int(pairs[rank_in_bin - 1][1])
        return {"threshold": self.threshold, "scored": total, "kept": keep, "top_fraction": self.top_fraction}

    def apply(self, table: pa.Table) -> StageResult:
        assert self.threshold is not None, "clip_score applied before fit"
        scores = numbers(table, "clip_score", np.float32)
        if self.tie_break is None:
            return StageResult([None if s >= self.threshold else "clip_score" for s in scores])
        ties = tie_hashes(table)
        return StageResult([None if s > self.threshold or (s == self.threshold and h <= self.tie_break)
                            else "clip_score" for s, h in zip(scores, ties)])

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "min_score": self.min_score, "top_fraction": self.top_fraction,
                "threshold": self.threshold}


def tie_hashes(table: pa.Table) -> list[int]:
    """A fixed pseudo-random order of samples, for breaking equal scores: 63 bits of BLAKE2b of (shard, key)."""
    return [int.from_bytes(hashlib.blake2b(f"{s}\x00{k}".encode(), digest_size=8).digest(), "little") >> 1
            for s, k in zip(strings(table, "shard"), strings(table, "key"))]


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index of cosine scores in [-1, 1] (out-of-range float error is clipped into the end bins)."""
    bins = np.floor((scores.astype(np.float64) + 1.0) / 2.0 * HISTOGRAM_BINS).astype(np.int64)
    return np.clip(bins, 0, HISTOGRAM_BINS - 1)


def _finite(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    scores = numbers(table, "clip_score", np.float32)
    return scores, np.isfinite(scores)


def _score_histogram(table: pa.Table) -> np.ndarray:
    scores, finite = _finite(table)
    return np.bincount(score_bins(scores[finite]), minlength=HISTOGRAM_BINS)


@dataclass
class _ScoresInBin:
    bin_index: int

    def __call__(self, table: pa.Table) -> list[tuple[float, int]]:
        scores, finite = _finite(table)
        chosen = np.nonzero(finite & (score_bins(scores) == self.bin_index))[0]
        ties = tie_hashes(table.take(pa.array(chosen)))
        return [(float(scores[i]), h) for i, h in zip(chosen, ties)]
