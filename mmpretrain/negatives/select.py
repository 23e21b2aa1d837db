"""Choosing k negatives per sample from several types by a weighted mix: shared by the offline shard writer
(`mmpretrain negatives write --per-sample K --mix ...`) and the online training stage (`generated_negatives`), so
both give the same kind of list.

Each of the k slots draws a type by its weight among the types that still have candidates; a type whose
generator does not apply to the sample (or runs out) leaves the draw, so the other types fill its slots. Fewer
than k come back only when every type is exhausted: the caller decides what that means (the training stage
skips a sample with none; `choose` repeats draws for a sample with 1..k-1).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from mmpretrain.negatives.api import generate_negatives
from mmpretrain.negatives.base import Generator, Negative, get_generator
from mmpretrain.negatives.parse import normalise
from mmpretrain.negatives.rules import RuleGenerator


def mixed_negatives(candidates_of: Callable[[str], Sequence[Negative]], mix: Mapping[str, float], k: int,
                    rng: random.Random) -> list[Negative]:
    """Up to `k` distinct negatives, each slot's type drawn by `mix` weight among the types with candidates left.

    `candidates_of(type)` is called at most once per type and only for types drawn, so a caller can generate
    lazily (the online stage pays only for the types it uses). Candidates of one type are taken in a shuffled
    order; a text already taken (after normalisation) from another type is passed over.
    """
    live = [t for t, weight in mix.items() if weight > 0]
    pools: dict[str, list[Negative]] = {}
    taken: set[str] = set()
    chosen: list[Negative] = []
    while len(chosen) < k and live:
        type_ = rng.choices(live, weights=[mix[t] for t in live])[0]
        if type_ not in pools:
            pools[type_] = list(candidates_of(type_))
            rng.shuffle(pools[type_])
        pool = pools[type_]
        while pool and normalise(pool[-1].text) in taken:
            pool.pop()
        if not pool:
            live.remove(type_)
            continue
        negative = pool.pop()
        taken.add(normalise(negative.text))
        chosen.append(negative)
    return chosen


def default_generators(types: Sequence[str], candidates: int) -> dict[str, Generator]:
    """One private generator per type asking for at least `candidates` candidates per caption (private: the
    registry's instances are shared and `generate_negatives` tunes them)."""
    generators: dict[str, Generator] = {}
    for type_ in types:
        generator = get_generator(type_)
        if isinstance(generator, RuleGenerator):
            generator.max_candidates = max(generator.max_candidates, candidates)
        generators[type_] = generator
    return generators


def sample_negatives(captions: Sequence[str], key: str, seed: int, mix: Mapping[str, float], k: int,
                     generators: Mapping[str, Generator]) -> list[Negative]:
    """k negatives for one sample by `mix`, deterministic per (seed, key): the generators draw from
    `generate_negatives`' per-(type, caption) streams, the mix from its own stream, so the result does not depend
    on which other samples were seen."""
    def candidates_of(type_: str) -> list[Negative]:
        return generate_negatives(captions, [type_], k, seed, key, generators=generators)[0]

    return mixed_negatives(candidates_of, mix, k, random.Random(f"{seed}-{key}-mix"))
