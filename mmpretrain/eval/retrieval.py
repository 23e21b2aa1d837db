"""Exact cross-modal retrieval recall@k, as reported in CLIP-style papers, between any two modalities.

Each item on either side belongs to a group: for instance-level retrieval, the sample it came from (a sample may
own several texts, COCO-style); for class-level retrieval, its label. A query is a hit at k when any of its k most
similar keys is in its group. For images and their captions:
``image_to_text_R@k``: fraction of images with at least one of their texts among the k most similar texts.
``text_to_image_R@k``: fraction of texts whose image is among the k most similar images.
Values equal clip_benchmark's ``text_retrieval_recall@k`` and ``image_retrieval_recall@k`` respectively.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Similarities are computed this many query rows at a time, so a 5k x 25k eval never holds the full matrix.
_BLOCK = 1024


def _hits_at_k(queries: torch.Tensor, keys: torch.Tensor, query_groups: torch.Tensor, key_groups: torch.Tensor,
               k_max: int) -> torch.Tensor:
    """For every query row, a bool [Q, k_max] telling whether each of its top-k_max keys is in its group."""
    hits = []
    for start in range(0, len(queries), _BLOCK):
        scores = queries[start:start + _BLOCK] @ keys.T
        top = scores.topk(k_max, dim=1).indices
        hits.append(key_groups[top] == query_groups[start:start + len(top)].view(-1, 1))
    return torch.cat(hits)


def recall_at_k(queries: torch.Tensor, keys: torch.Tensor, query_groups: torch.Tensor, key_groups: torch.Tensor,
                ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """{k: fraction of queries with a key of their group among their k most similar keys}; k is capped at the
    number of keys. Features are normalized [Q, D] and [K, D]; groups are integer ids [Q] and [K]."""
    queries, keys = queries.float(), keys.float()
    query_groups, key_groups = query_groups.long().view(-1), key_groups.long().view(-1)
    if len(query_groups) != len(queries) or len(key_groups) != len(keys):
        raise ValueError(f"groups for {len(query_groups)} queries and {len(key_groups)} keys, features for "
                         f"{len(queries)} and {len(keys)}")
    if len(queries) == 0 or len(keys) == 0:
        raise ValueError("retrieval needs at least one query and one key")
    hits = _hits_at_k(queries, keys, query_groups, key_groups, min(max(ks), len(keys)))
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def cross_modal_metrics(first: str, first_features: torch.Tensor, first_groups: torch.Tensor,
                        second: str, second_features: torch.Tensor, second_groups: torch.Tensor,
                        ks: Sequence[int] = (1, 5, 10), suffix: str = "") -> dict[str, float]:
    """Recall@k both ways: ``<first>_to_<second><suffix>_R@k`` (first-modality queries, second-modality keys),
    then ``<second>_to_<first><suffix>_R@k``. `suffix` is ``_class`` for class-level retrieval."""
    forward = recall_at_k(first_features, second_features, first_groups, second_groups, ks)
    backward = recall_at_k(second_features, first_features, second_groups, first_groups, ks)
    return {**{f"{first}_to_{second}{suffix}_R@{k}": v for k, v in forward.items()},
            **{f"{second}_to_{first}{suffix}_R@{k}": v for k, v in backward.items()}}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Exact image<->text recall@k for normalized features [N, D] and [M, D], text i belonging to image
    ``text_to_image[i]``; k is capped at the candidate count."""
    owner = text_to_image.long().view(-1)
    if len(owner) != len(text_features):
        raise ValueError(f"text_to_image has {len(owner)} entries for {len(text_features)} texts")
    if len(image_features) == 0 or len(text_features) == 0:
        raise ValueError("retrieval_metrics needs at least one image and one text")
    return cross_modal_metrics("image", image_features, torch.arange(len(image_features)),
                               "text", text_features, owner, ks)
