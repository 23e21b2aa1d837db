"""Zero-shot classification: a text-derived linear classifier and its accuracy metrics.

The classifier follows open_clip's ``build_zero_shot_classifier``: for each class, embed every filled template,
average the normalized embeddings and renormalize (prompt ensembling), giving weights of shape [D, C].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from mmpretrain.eval.templates import fill_template

Tokenizer = Callable[[list[str]], torch.Tensor]


class TextEncoder(Protocol):
    """The slice of the model interface the classifier needs."""

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...


@torch.no_grad()
def build_classifier(model: TextEncoder, tokenizer: Tokenizer, classnames: Sequence[str],
                     templates: Sequence[str], batch_size: int = 256,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Embed `templates` x `classnames` and return the ensembled, L2-normalized class weights [D, C] (on CPU).

    Texts are ordered class-major and encoded `batch_size` at a time, so any number of classes fits in memory.
    """
    if not classnames or not templates:
        raise ValueError("build_classifier needs at least one class name and one template")
    texts = [fill_template(t, c) for c in classnames for t in templates]
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        chunks.append(model.encode("text", tokens, normalize=True).float().cpu())
    embeddings = torch.cat(chunks).reshape(len(classnames), len(templates), -1).mean(dim=1)
    embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    return embeddings.T.contiguous()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits (k capped at the number of classes)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1).float().mean().item()


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 recall averaged over the classes present in `labels` (sklearn's balanced accuracy)."""
    recalls = [(predictions[labels == c] == c).float().mean() for c in labels.unique()]
    return torch.stack(recalls).mean().item()


def zeroshot_metrics(image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                     topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies (keys ``top{k}``) and ``mean_per_class_recall`` for normalized features [N, D].

    The key keeps the requested k even when it is capped (top5 over 3 classes is top3, i.e. 1.0).
    """
    if len(image_features) == 0:
        raise ValueError("zeroshot_metrics got no images")
    logits = image_features.float() @ classifier.float()
    labels = labels.long().view(-1)
    metrics = {f"top{k}": topk_accuracy(logits, labels, k) for k in topk}
    metrics["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(dim=1), labels)
    return metrics
