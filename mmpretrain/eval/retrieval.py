"""Exact image<->text retrieval recall@k, as reported in CLIP-style papers.

An image may own several texts (COCO-style), so each text points at its image through ``text_to_image``.
``image_to_text_R@k``: fraction of images with at least one of their texts among the k most similar texts.
``text_to_image_R@k``: fraction of texts whose image is among the k most similar images.
Values equal clip_benchmark's ``text_retrieval_recall@k`` and ``image_retrieval_recall@k`` respectively.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# Similarities are computed this many query rows at a time, so a 5k x 25k eval never holds the full matrix.
_BLOCK = 1024


def _hits_at_k(queries: torch.Tensor, keys: torch.Tensor,
               targets_of_topk: Callable[[torch.Tensor, int], torch.Tensor], k_max: int) -> torch.Tensor:
    """For every query row, a bool [Q, k_max] telling whether each of its top-k_max keys is a positive."""
    hits = []
    for start in range(0, len(queries), _BLOCK):
        scores = queries[start:start + _BLOCK] @ keys.T
        top = scores.topk(k_max, dim=1).indices
        hits.append(targets_of_topk(top, start))
    return torch.cat(hits)


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Exact recall@k both ways for normalized features [N, D] and [M, D]; k is capped at the candidate count."""
    images, texts = image_features.float(), text_features.float()
    owner = text_to_image.long().view(-1)
    if len(owner) != len(texts):
        raise ValueError(f"text_to_image has {len(owner)} entries for {len(texts)} texts")
    if len(images) == 0 or len(texts) == 0:
        raise ValueError("retrieval_metrics needs at least one image and one text")
    k_max = max(ks)

    def image_hits(top: torch.Tensor, start: int) -> torch.Tensor:
        rows = torch.arange(start, start + len(top)).view(-1, 1)
        return owner[top] == rows

    def text_hits(top: torch.Tensor, start: int) -> torch.Tensor:
        return top == owner[start:start + len(top)].view(-1, 1)

    i2t = _hits_at_k(images, texts, image_hits, min(k_max, len(texts)))
    t2i = _hits_at_k(texts, images, text_hits, min(k_max, len(images)))
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_to_text_R@{k}"] = i2t[:, :k].any(dim=1).float().mean().item()
    for k in ks:
        metrics[f"text_to_image_R@{k}"] = t2i[:, :k].any(dim=1).float().mean().item()
    return metrics
