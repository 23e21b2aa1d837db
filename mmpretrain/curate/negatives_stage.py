"""Hard-negative captions as a curation stage: each kept sample is written with `<key>.neg.json` (and
`<key>.negtypes.json`), from the rule-based generators of `mmpretrain/negatives/` (the same ones `mmpretrain
negatives write` uses, with the same per-sample seeding, so a sample gets the same negatives either way)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmpretrain.curate.stages import Stage, register_stage, require
from mmpretrain.negatives.api import generate_negatives
from mmpretrain.negatives.base import available_generators


@register_stage("negatives")
@dataclass
class Negatives(Stage):
    role: ClassVar[str] = "transform"
    types: list[str] = field(default_factory=lambda: list(available_generators()))
    per_caption: int = 1
    seed: int = 0

    def check(self, label: str) -> None:
        unknown = [t for t in self.types if t not in available_generators()]
        require(not unknown and bool(self.types), label,
                f"types must name known generators ({', '.join(available_generators())}), got {self.types}")
        require(self.per_caption >= 1, label, "per_caption must be >= 1")

    def members(self, key: str, captions: list[str]) -> dict[str, bytes]:
        negatives, _ = generate_negatives(captions, self.types, self.per_caption, self.seed, key)
        return {"neg.json": json.dumps([n.text for n in negatives], ensure_ascii=False).encode("utf-8"),
                "negtypes.json": json.dumps([n.type for n in negatives]).encode("utf-8")}

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "types": list(self.types), "per_caption": self.per_caption, "seed": self.seed}
