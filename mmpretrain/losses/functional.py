"""Contrastive losses as pure functions of features: no modules, no collectives, testable in one process."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): row i of each side is the positive of row i of the other.

    Features are L2-normalized by the caller and `logit_scale` is already exponentiated (open_clip's
    conventions), so logits are scaled cosine similarities.
    """
    logits_per_image = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2
