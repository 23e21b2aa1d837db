"""Hard negatives generated in the training stream (`data.online_negatives`), instead of read from `neg.json`.

The `generated_negatives` stage (data/stages.py) turns a sample's captions into `data.negatives_per_sample`
negatives by the rule-based generators (mmpretrain/negatives/), their types drawn by `mix`. The seed is the
sample's own `context.seed` (rank, reader, source, pass, index), so a sample gets new negatives on every pass
and a resumed run regenerates exactly what the uninterrupted one would have; the stage draws nothing from
`context.rng`, so the other stages' draws are those of a run without it.

Not offered online: the blind filter and in-vocabulary replacements, which need the whole corpus (a language
model of its captions, its word list); write the negatives offline (`mmpretrain negatives write`) for those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mmpretrain.errors import ConfigError


@dataclass
class OnlineNegativesConfig:
    """Which negative types to generate per sample, and their mix (k is `data.negatives_per_sample`)."""

    types: list[str] = field(default_factory=list)       # empty: no online generation (neg.json is read)
    mix: dict[str, float] = field(default_factory=dict)  # type -> weight; a type left out weighs 1

    @property
    def enabled(self) -> bool:
        return bool(self.types)

    def weights(self) -> dict[str, float]:
        return {t: float(self.mix.get(t, 1.0)) for t in self.types}

    def validate(self, negatives_per_sample: int) -> None:
        if not self.types:
            if self.mix:
                raise ConfigError("data.online_negatives.mix is set but data.online_negatives.types is empty")
            return
        from mmpretrain.negatives.base import available_generators

        known = available_generators()
        unknown = [t for t in self.types if t not in known]
        if unknown:
            raise ConfigError(f"data.online_negatives.types: unknown negative type {unknown[0]!r}; known: "
                              f"{', '.join(known)}")
        if len(set(self.types)) != len(self.types):
            raise ConfigError(f"data.online_negatives.types names a type twice: {self.types}")
        stray = [t for t in self.mix if t not in self.types]
        if stray:
            raise ConfigError(f"data.online_negatives.mix names {stray[0]!r}, which data.online_negatives.types "
                              f"{self.types} lacks")
        if any(w < 0 for w in self.mix.values()) or not any(w > 0 for w in self.weights().values()):
            raise ConfigError(f"data.online_negatives.mix: weights must be >= 0 with one > 0, got {self.mix}")
        if negatives_per_sample < 1:
            raise ConfigError("data.online_negatives.types needs data.negatives_per_sample >= 1 (how many "
                              "negatives each sample gets)")


class OnlineNegatives:
    """k negatives for one sample's captions, by the configured mix, seeded by the sample's seed."""

    def __init__(self, config: OnlineNegativesConfig, per_sample: int) -> None:
        from mmpretrain.negatives.select import default_generators

        self.mix = config.weights()
        self.per_sample = per_sample
        self.generators = default_generators(config.types, per_sample)

    def __call__(self, captions: Sequence[str], key: str, seed: int) -> list[str]:
        from mmpretrain.negatives.select import sample_negatives

        chosen = sample_negatives(captions, key, seed, self.mix, self.per_sample, self.generators)
        return [n.text for n in chosen]
