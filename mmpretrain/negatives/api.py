"""Negatives for one sample (its positive captions), deterministic per (seed, key), and the counts behind them.

Each (type, caption) pair draws from its own ``random.Random(f"{seed}-{key}-{type}-{index}")``: asking for
another type, or reordering types, never changes what a type gives, and a sample's negatives do not depend on
which other samples were processed before it (so shards can be written in parallel and re-written alike).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmpretrain.negatives.base import Generator, Negative, Skip, get_generator
from mmpretrain.negatives.parse import normalise
from mmpretrain.negatives.rules import RuleGenerator


@dataclass
class TypeCounts:
    """Per negative type: captions tried, captions it gave at least one negative for, negatives emitted, captions
    it did not apply to (by reason), and candidates dropped for equalling a positive of the sample."""

    captions: int = 0
    applied: int = 0
    emitted: int = 0
    not_applicable: int = 0
    reasons: Counter = field(default_factory=Counter)
    equal_to_positive: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"captions": self.captions, "applied": self.applied, "emitted": self.emitted,
                "not_applicable": self.not_applicable, "reasons": dict(sorted(self.reasons.items())),
                "equal_to_positive": self.equal_to_positive}


@dataclass
class NegativeReport:
    """Counts per type, summed over samples with `merge`."""

    types: dict[str, TypeCounts] = field(default_factory=dict)
    samples: int = 0

    def counts(self, type_: str) -> TypeCounts:
        return self.types.setdefault(type_, TypeCounts())

    def merge(self, other: "NegativeReport") -> None:
        self.samples += other.samples
        for name, theirs in other.types.items():
            mine = self.counts(name)
            for attr in ("captions", "applied", "emitted", "not_applicable", "equal_to_positive"):
                setattr(mine, attr, getattr(mine, attr) + getattr(theirs, attr))
            mine.reasons.update(theirs.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "types": {name: c.to_json() for name, c in self.types.items()}}


def caption_rng(seed: int, key: str, type_: str, index: int) -> random.Random:
    """The random stream of one (sample, type, caption): string-seeded, so stable across processes and Pythons."""
    return random.Random(f"{seed}-{key}-{type_}-{index}")


def _default(type_: str, per_caption: int, vocabulary: frozenset[str] | None) -> Generator:
    """The registry's generator, asked for enough candidates that copies of positives can be passed over, and
    restricted to `vocabulary` for its replacement words when given."""
    generator = get_generator(type_)
    if isinstance(generator, RuleGenerator):
        generator.max_candidates = max(generator.max_candidates, 2 * per_caption)
        generator.vocabulary = vocabulary
    return generator


def caption_vocabulary(captions: Iterable[str]) -> frozenset[str]:
    """The normalised words of a corpus: pass as `vocabulary` so replacements use only words the data uses."""
    return frozenset(word for caption in captions for word in normalise(caption).split())


def generate_negatives(captions: Sequence[str], types: Sequence[str], per_caption: int, seed: int, key: str,
                       generators: Mapping[str, Generator] | None = None, vocabulary: frozenset[str] | None = None
                       ) -> tuple[list[Negative], NegativeReport]:
    """Up to `per_caption` negatives of each type for each caption of one sample (the sample's positives).

    A negative equal to any positive after normalisation is dropped (counted as equal_to_positive), as are
    repeats within the sample; a caption a type gives nothing for counts as not applicable, with the reason.
    `generators` overrides the registry's default instance of a type (e.g. `Count(articles=True)`);
    `vocabulary` (see `caption_vocabulary`) limits the default generators' replacement words to the data's own.
    """
    if per_caption < 1:
        raise ValueError(f"per_caption must be at least 1, got {per_caption}")
    chosen = {t: (generators or {}).get(t) or _default(t, per_caption, vocabulary) for t in types}
    positives = {normalise(c) for c in captions}
    report = NegativeReport(samples=1)
    negatives: list[Negative] = []
    seen: set[str] = set()
    for type_, generator in chosen.items():
        counts = report.counts(type_)
        for index, caption in enumerate(captions):
            counts.captions += 1
            made = generator.generate(caption, caption_rng(seed, key, type_, index))
            if isinstance(made, Skip):
                counts.not_applicable += 1
                counts.reasons[made.reason] += 1
                continue
            kept = 0
            for negative in made:
                text = normalise(negative.text)
                if text in positives:
                    counts.equal_to_positive += 1
                    continue
                if text in seen:
                    continue
                seen.add(text)
                negatives.append(negative)
                kept += 1
                if kept == per_caption:
                    break
            if kept:
                counts.applied += 1
                counts.emitted += kept
            else:
                counts.not_applicable += 1
                counts.reasons["every candidate equals a positive or another negative"] += 1
    return negatives, report
