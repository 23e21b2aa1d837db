"""Scoring a compositional set: which caption an image prefers, per negative type, beside a blind scorer.

An item is right about a negative when its image's similarity to the positive caption is strictly higher than to
the negative. Ties are misses: a collapsed model (every text embedded alike) then scores 0, not 1. clip_benchmark
(1.6.2, `image_caption_selection`) takes ``argmax`` over [positive, negative], which resolves a tie to the first
index, the positive: on a tie it counts a hit. Exact float ties do not occur between distinct captions of a working
model, so the two agree (the parity test checks SugarCrepe to 1e-6); they differ only for degenerate models, where
ours is the honest number. ARO puts the negative first and so already counts ties as misses.

Winoground (Thrush et al. 2022), with s(c, i) the similarity of caption c and image i:
text score ``s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)``; image score ``s(c0,i0) > s(c0,i1) and
s(c1,i1) > s(c1,i0)``; group score both. Its ``acc`` is the group score (clip_benchmark's ``acc``).

A blind scorer, ``blind_scorer(positive, negative) -> bool`` (True: it picks the positive), sees the captions
only. Its accuracy beside each type shows what a text-only model gets: a type it solves measures grammar or
plausibility, not the image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Optional

import torch

from mmpretrain.eval.compositional.data import ChoiceItem, CompositionalData, GroupItem
from mmpretrain.eval.compositional.readers import WINOGROUND_TYPES

BlindScorer = Callable[[str, str], bool]


def choice_hits(items: Sequence[ChoiceItem], images: torch.Tensor, texts: torch.Tensor, text_index: dict[str, int]
                ) -> list[list[bool]]:
    """Per item, per negative: does its image score the positive strictly higher (features normalised)?"""
    hits = []
    for item in items:
        image = images[item.image]
        positive = image @ texts[text_index[item.positive]]
        hits.append([bool(positive > image @ texts[text_index[text]]) for text, _ in item.negatives])
    return hits


def _per_type(items: Sequence[ChoiceItem], hits: Sequence[Sequence[bool]], joint_type: Optional[str]
              ) -> dict[str, list[bool]]:
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for item, item_hits in zip(items, hits):
        for (_, kind), hit in zip(item.negatives, item_hits):
            outcomes[kind].append(hit)
        if joint_type is not None:
            outcomes[joint_type].append(all(item_hits))
    return dict(sorted(outcomes.items()))


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values)


def choice_metrics(items: Sequence[ChoiceItem], hits: Sequence[Sequence[bool]], joint_type: Optional[str] = None,
                   blind_scorer: Optional[BlindScorer] = None) -> dict[str, float]:
    """``<type>/acc`` for each negative type (and `joint_type`), ``acc`` their mean; with a blind scorer the
    same as ``blind_acc``."""
    metrics: dict[str, float] = {}
    accuracy = {kind: _mean(v) for kind, v in _per_type(items, hits, joint_type).items()}
    blind: dict[str, float] = {}
    if blind_scorer is not None:
        blind_hits = [[bool(blind_scorer(item.positive, text)) for text, _ in item.negatives] for item in items]
        blind = {kind: _mean(v) for kind, v in _per_type(items, blind_hits, joint_type).items()}
    for kind, value in accuracy.items():
        metrics[f"{kind}/acc"] = value
        if blind:
            metrics[f"{kind}/blind_acc"] = blind[kind]
    metrics["acc"] = _mean_float(list(accuracy.values()))
    if blind:
        metrics["blind_acc"] = _mean_float(list(blind.values()))
    return metrics


def _mean_float(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def group_scores(groups: Sequence[GroupItem], images: torch.Tensor, texts: torch.Tensor,
                 text_index: dict[str, int]) -> dict[str, list[bool]]:
    """Winoground's text, image and group outcome of each group."""
    outcomes: dict[str, list[bool]] = {kind: [] for kind in WINOGROUND_TYPES}
    for group in groups:
        # s[c][i]: caption c against image i
        s = [[float(texts[text_index[c]] @ images[i]) for i in group.images] for c in group.captions]
        text = s[0][0] > s[1][0] and s[1][1] > s[0][1]
        image = s[0][0] > s[0][1] and s[1][1] > s[1][0]
        for kind, outcome in zip(WINOGROUND_TYPES, (text, image, text and image)):
            outcomes[kind].append(outcome)
    return outcomes


def group_metrics(outcomes: dict[str, list[bool]]) -> dict[str, float]:
    metrics = {f"{kind}/acc": _mean(values) for kind, values in outcomes.items()}
    metrics["acc"] = metrics["group/acc"]
    return metrics


def texts_of(data: CompositionalData) -> list[str]:
    """Every distinct caption of the set, in first-seen order (each is embedded once)."""
    texts: dict[str, None] = {}
    for item in data.choices:
        texts[item.positive] = None
        texts.update((text, None) for text, _ in item.negatives)
    for group in data.groups:
        texts.update((caption, None) for caption in group.captions)
    return list(texts)
