"""Embed a read compositional set and score it: the harness's `kind: compositional` runs `evaluate`.

Distinct images and distinct captions are embedded once each (a SugarCrepe image serves several subsets, an
order positive several negatives). Images are decoded `batch_size` at a time, so only one batch is ever held
decoded; one whose pixels fail to decode costs its items, counted as skips like those found when reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch

from mmpretrain.data.skips import SampleSkipped, SkipEvent
from mmpretrain.eval.compositional.data import ChoiceItem, CompositionalData, ImageRef
from mmpretrain.eval.compositional.scoring import (BlindScorer, choice_hits, choice_metrics, group_metrics,
                                                   group_scores, texts_of)
from mmpretrain.eval.modalities import Encoder, ImageModality, TextModality


def embed_images(model: Encoder, refs: Sequence[ImageRef], images: ImageModality, batch_size: int,
                 device: str | torch.device, progress: bool = False, desc: str = "images"
                 ) -> tuple[Optional[torch.Tensor], dict[int, SampleSkipped]]:
    """Normalised features [len(refs), D] (a failed image's row is zeros; None if all failed), and the failures."""
    rows: list[torch.Tensor] = []
    failed: dict[int, SampleSkipped] = {}
    for start in range(0, len(refs), batch_size):
        decoded, where = [], []
        for index in range(start, min(start + batch_size, len(refs))):
            try:
                decoded.append(refs[index].load())
                where.append(index)
            except SampleSkipped as e:
                failed[index] = e
        if decoded:
            features = images.encode(model, decoded, batch_size, device, False, desc)
            rows.extend(zip(where, features))  # type: ignore[arg-type]
    if not rows:
        return None, failed
    table = torch.zeros(len(refs), rows[0][1].shape[-1])
    for index, feature in rows:  # type: ignore[misc]
        table[index] = feature
    return table, failed


def drop_failed(data: CompositionalData, failed: dict[int, SampleSkipped], source: str) -> None:
    """Remove the items whose image failed to decode, counting each as a skip of its image's reason."""
    if not failed:
        return

    def keep(item: Any) -> bool:
        bad = [i for i in ((item.image,) if isinstance(item, ChoiceItem) else item.images) if i in failed]
        if bad:
            error = failed[bad[0]]
            data.skips.record(-1, [SkipEvent(error.reason, source, 1, f"{item.key}: {error.detail}", item.key)])
        return not bad

    data.choices = [item for item in data.choices if keep(item)]
    data.groups = [group for group in data.groups if keep(group)]


def evaluate(model: Encoder, data: CompositionalData, images: ImageModality, texts: TextModality, batch_size: int,
             device: str | torch.device, source: str, blind_scorer: Optional[BlindScorer] = None,
             progress: bool = False, desc: str = "") -> dict[str, float]:
    """The set's metrics (see scoring.py); `data` loses the items whose images fail to decode (counted)."""
    image_features, failed = embed_images(model, data.images, images, batch_size, device, progress,
                                          f"{desc} images")
    drop_failed(data, failed, source)
    if image_features is None or not (data.choices or data.groups):
        return {}
    captions = texts_of(data)
    text_features = texts.encode(model, captions, batch_size, device, progress, f"{desc} texts")
    text_index = {caption: i for i, caption in enumerate(captions)}
    if data.groups:
        return group_metrics(group_scores(data.groups, image_features, text_features, text_index))
    hits = choice_hits(data.choices, image_features, text_features, text_index)
    return choice_metrics(data.choices, hits, data.joint_type, blind_scorer)

