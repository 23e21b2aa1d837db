"""Eval metrics: hand-computed cases, parity with clip_benchmark, and template ensembling."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification as cb_zeroshot
from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k as cb_recall_at_k
from sklearn.metrics import balanced_accuracy_score

from mmpretrain.eval.retrieval import retrieval_metrics
from mmpretrain.eval.templates import TEMPLATE_SETS, fill_template, get_templates
from mmpretrain.eval.zeroshot import build_classifier, zeroshot_metrics

# Rows are images, columns texts; texts 0 and 1 belong to image 0, text 2 to image 1, text 3 to image 2.
SIMILARITY = torch.tensor([
    [0.9, 0.1, 0.5, 0.2],
    [0.3, 0.8, 0.6, 0.1],
    [0.4, 0.2, 0.7, 0.6],
])
TEXT_TO_IMAGE = torch.tensor([0, 0, 1, 2])


def test_retrieval_recall_matches_hand_computed_values() -> None:
    # Identity image features make image_features @ text_features.T equal SIMILARITY exactly.
    metrics = retrieval_metrics(torch.eye(3), SIMILARITY.T.contiguous(), TEXT_TO_IMAGE, ks=(1, 2, 5))
    # image 0 finds text 0 first; image 1 ranks text 2 second; image 2 ranks text 3 second.
    assert metrics["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert metrics["image_to_text_R@2"] == pytest.approx(1.0)
    assert metrics["image_to_text_R@5"] == pytest.approx(1.0)  # k capped at 4 texts
    # texts 0 and 3 find their image first; text 2 second; text 1 only third.
    assert metrics["text_to_image_R@1"] == pytest.approx(0.5)
    assert metrics["text_to_image_R@2"] == pytest.approx(0.75)
    assert metrics["text_to_image_R@5"] == pytest.approx(1.0)  # k capped at 3 images
    assert list(metrics) == [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 2, 5)]


def test_zeroshot_metrics_match_hand_computed_values() -> None:
    classifier = torch.eye(3)  # logits = image features
    logits = torch.tensor([
        [0.9, 0.05, 0.05],  # label 0: top1 hit
        [0.5, 0.4, 0.1],    # label 1: second
        [0.2, 0.3, 0.5],    # label 2: top1 hit
        [0.6, 0.1, 0.3],    # label 2: second
    ])
    metrics = zeroshot_metrics(logits, torch.tensor([0, 1, 2, 2]), classifier, topk=(1, 2, 5))
    assert metrics["top1"] == pytest.approx(0.5)
    assert metrics["top2"] == pytest.approx(1.0)
    assert metrics["top5"] == pytest.approx(1.0)  # capped at 3 classes
    # per-class recall: class 0 -> 1, class 1 -> 0, class 2 -> 1/2
    assert metrics["mean_per_class_recall"] == pytest.approx(0.5)


def test_zeroshot_metrics_match_clip_benchmark_and_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    # clip_benchmark 1.6.2 calls float() on a 1-element array, which numpy 2 refuses; shadow `float` in its
    # module so its own code still computes the reference values.
    monkeypatch.setattr(cb_zeroshot, "float", lambda a: builtins.float(np.asarray(a).reshape(())),
                        raising=False)
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(200, 16, generator=gen), dim=-1)
    classifier = F.normalize(torch.randn(16, 12, generator=gen), dim=0)
    labels = torch.randint(0, 12, (200,), generator=gen)
    metrics = zeroshot_metrics(features, labels, classifier, topk=(1, 5))
    top1, top5 = cb_zeroshot.accuracy(features @ classifier, labels, topk=(1, 5))
    assert metrics["top1"] == pytest.approx(top1)
    assert metrics["top5"] == pytest.approx(top5)
    predictions = (features @ classifier).argmax(dim=1)
    assert metrics["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, predictions))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_clip_benchmark_with_several_texts_per_image(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_images = 30
    texts_per_image = torch.randint(1, 4, (n_images,), generator=gen)
    text_to_image = torch.repeat_interleave(torch.arange(n_images), texts_per_image)
    images = F.normalize(torch.randn(n_images, 8, generator=gen), dim=-1)
    # Texts near their image, so recall is neither 0 nor 1.
    texts = F.normalize(images[text_to_image] + 1.5 * torch.randn(len(text_to_image), 8, generator=gen), dim=-1)
    ks = (1, 5, 10)
    ours = retrieval_metrics(images, texts, text_to_image, ks=ks)

    scores = texts @ images.T
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), text_to_image] = True
    for k in ks:
        image_retrieval = (cb_recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        text_retrieval = (cb_recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
        assert ours[f"text_to_image_R@{k}"] == pytest.approx(image_retrieval)
        assert ours[f"image_to_text_R@{k}"] == pytest.approx(text_retrieval)


class _TableTextModel:
    """Fake model: token id i encodes to row i of a fixed (unnormalized) table, normalized on request."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        assert modality == "text"
        out = self.table[x[:, 0]]
        return F.normalize(out, dim=-1) if normalize else out


def test_classifier_is_the_renormalized_mean_of_normalized_template_embeddings() -> None:
    classnames, templates = ["cat", "dog"], ["a {}.", "the {c}!"]
    texts = [fill_template(t, c) for c in classnames for t in templates]
    assert texts == ["a cat.", "the cat!", "a dog.", "the dog!"]
    table = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    model = _TableTextModel(table)

    def tokenizer(batch: list[str]) -> torch.Tensor:
        return torch.tensor([[texts.index(t)] for t in batch])

    classifier = build_classifier(model, tokenizer, classnames, templates, batch_size=3, device="cpu")
    # cat: mean of (0.6, 0.8, 0) and (0, 0, 1) = (0.3, 0.4, 0.5), renormalized by sqrt(0.5)
    cat = torch.tensor([0.3, 0.4, 0.5]) / 0.5 ** 0.5
    # dog: mean of (1, 0, 0) and (1/sqrt2, 1/sqrt2, 0)
    dog = (torch.tensor([1.0, 0.0, 0.0]) + torch.tensor([1.0, 1.0, 0.0]) / 2 ** 0.5) / 2
    dog = dog / dog.norm()
    assert classifier.shape == (3, 2)
    torch.testing.assert_close(classifier, torch.stack([cat, dog], dim=1))


def test_template_sets_are_named_and_unknown_names_list_the_known_ones() -> None:
    assert get_templates("digits")[0] == "a handwritten {}."
    assert set(TEMPLATE_SETS) >= {"digits", "shapes-colour", "shapes-shape", "generic"}
    for templates in TEMPLATE_SETS.values():
        assert all("{}" in t for t in templates)
    with pytest.raises(KeyError, match="digits.*generic"):
        get_templates("nope")
