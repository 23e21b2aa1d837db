"""What a hard-negative generator is: a named, seeded function from one caption to tagged negatives or a Skip.

A generator that cannot apply to a caption returns ``Skip(reason)``, which the caller counts per type and
reason; it never returns the caption itself (or any rewording that normalises to it) as a "negative", because a
copy of a positive trained as a negative teaches the model to push apart a matching pair.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Negative:
    """A caption that should not match the image. `type` is the generator's name, `detail` what it changed;
    `source` is the positive caption it was made from (what the blind scorer compares it with)."""

    text: str
    type: str
    detail: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "type": self.type, "detail": self.detail, "source": self.source}


@dataclass(frozen=True)
class Skip:
    """The generator does not apply to this caption; `reason` is a short stable phrase, counted in reports."""

    reason: str


@runtime_checkable
class Generator(Protocol):
    """Deterministic given `rng`: the same caption and the same generator state give the same output."""

    name: str

    def generate(self, caption: str, rng: random.Random) -> list[Negative] | Skip: ...


_REGISTRY: dict[str, Callable[[], Generator]] = {}


def register_generator(name: str) -> Callable[[Callable[[], Generator]], Callable[[], Generator]]:
    """Class (or factory) decorator: `get_generator(name)` builds one with default arguments."""

    def register(factory: Callable[[], Generator]) -> Callable[[], Generator]:
        if name in _REGISTRY:
            raise ValueError(f"a negative generator named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return register


def get_generator(name: str) -> Generator:
    import mmpretrain.negatives.rules  # noqa: F401  (registers the built-in generators)

    if name not in _REGISTRY:
        raise KeyError(f"unknown negative type {name!r}; known: {', '.join(available_generators())}")
    return _REGISTRY[name]()


def available_generators() -> list[str]:
    import mmpretrain.negatives.rules  # noqa: F401

    return list(_REGISTRY)
