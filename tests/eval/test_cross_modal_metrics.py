"""Cross-modal recall@k between any two modalities: hand-computed ranks, and a naive reference on fixed features
for one-to-one, one-to-many (captions) and class-level groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmpretrain.eval.retrieval import cross_modal_metrics, recall_at_k, retrieval_metrics

# Rows are audio clips, columns texts (identity audio features make the scores equal this matrix).
SIMILARITY = torch.tensor([
    [0.9, 0.1, 0.5, 0.2],
    [0.3, 0.8, 0.6, 0.1],
    [0.4, 0.2, 0.7, 0.6],
])


def naive_recall(queries: torch.Tensor, keys: torch.Tensor, query_groups: list[int], key_groups: list[int],
                 k: int) -> float:
    """Sort every query's keys by score in Python; a hit when the first key of its group ranks below k."""
    hits = 0
    for q in range(len(queries)):
        ranked = sorted(range(len(keys)), key=lambda j: -float(queries[q] @ keys[j]))
        first = next((rank for rank, j in enumerate(ranked) if key_groups[j] == query_groups[q]), len(keys))
        hits += first < k
    return hits / len(queries)


def test_class_level_recall_matches_hand_computed_ranks() -> None:
    audio_labels, text_labels = torch.tensor([0, 1, 0]), torch.tensor([1, 0, 0, 1])
    metrics = cross_modal_metrics("audio", torch.eye(3), audio_labels, "text", SIMILARITY.T.contiguous(),
                                  text_labels, ks=(1, 2, 3), suffix="_class")
    # audio 0 (class 0) ranks texts 0 (class 1), 2 (class 0): first hit at rank 2; audio 1 (class 1) ranks
    # 1, 2 (class 0), then 0 (class 1): rank 3; audio 2 finds text 2 (class 0) first.
    assert metrics["audio_to_text_class_R@1"] == pytest.approx(1 / 3)
    assert metrics["audio_to_text_class_R@2"] == pytest.approx(2 / 3)
    assert metrics["audio_to_text_class_R@3"] == pytest.approx(1.0)
    # text 0 (class 1): audio 0, 2 (class 0) then 1: rank 3; text 1 (class 0): audio 1 then 2: rank 2;
    # text 2 (class 0): audio 2 first; text 3 (class 1): audio 2, 0 then 1: rank 3.
    assert metrics["text_to_audio_class_R@1"] == pytest.approx(1 / 4)
    assert metrics["text_to_audio_class_R@2"] == pytest.approx(2 / 4)
    assert metrics["text_to_audio_class_R@3"] == pytest.approx(1.0)
    assert list(metrics) == [f"{d}_class_R@{k}" for d in ("audio_to_text", "text_to_audio") for k in (1, 2, 3)]


@pytest.mark.parametrize("case", ["one_to_one", "captions", "classes"])
def test_recall_equals_naive_reference_on_fixed_features(case: str) -> None:
    generator = torch.Generator().manual_seed(7)
    n = 23
    first = F.normalize(torch.randn(n, 8, generator=generator), dim=-1)
    if case == "one_to_one":      # image <-> audio: one clip per image
        first_groups, second_groups = list(range(n)), list(range(n))
    elif case == "captions":      # audio <-> text: 1 to 3 captions per clip
        first_groups = list(range(n))
        second_groups = [i for i in range(n) for _ in range(1 + i % 3)]
    else:                         # class-level: 4 classes, any number of items each side
        first_groups = [i % 4 for i in range(n)]
        second_groups = [(i * 5) % 4 for i in range(31)]
    second = F.normalize(torch.randn(len(second_groups), 8, generator=generator), dim=-1)
    metrics = cross_modal_metrics("image", first, torch.tensor(first_groups), "audio", second,
                                  torch.tensor(second_groups), ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert metrics[f"image_to_audio_R@{k}"] == pytest.approx(naive_recall(first, second, first_groups,
                                                                              second_groups, k))
        assert metrics[f"audio_to_image_R@{k}"] == pytest.approx(naive_recall(second, first, second_groups,
                                                                              first_groups, k))


def test_image_text_metrics_are_the_cross_modal_ones_under_their_old_names() -> None:
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(9, 8, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(14, 8, generator=generator), dim=-1)
    owner = torch.tensor([i % 9 for i in range(14)])
    old = retrieval_metrics(images, texts, owner)
    assert list(old) == [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    assert old == cross_modal_metrics("image", images, torch.arange(9), "text", texts, owner)
    # text queries first: the same values under the same names
    swapped = cross_modal_metrics("text", texts, owner, "image", images, torch.arange(9))
    assert {k: swapped[k] for k in old} == old


def test_recall_refuses_mismatched_groups_and_empty_sides() -> None:
    with pytest.raises(ValueError, match="groups"):
        recall_at_k(torch.eye(2), torch.eye(2), torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one"):
        recall_at_k(torch.eye(2), torch.zeros(0, 2), torch.tensor([0, 1]), torch.zeros(0))
