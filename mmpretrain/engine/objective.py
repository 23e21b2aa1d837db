"""The training objective as one module: towers -> features -> contrastive loss.

Engines wrap this module, not the bare model, so an engine that shards parameters (DeepSpeed ZeRO-3) gathers the
logit scale and bias together with the towers during forward: outside forward they may be empty partitions.

Gradient accumulation that keeps the contrastive batch whole (GradCache, as open_clip's accum-freq does) needs
three more passes, which are forward modes for the same reason: every pass goes through the engine's module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Optional

import torch
from torch import nn

from mmpretrain.models.multitower import MultiTower

Features = dict[str, torch.Tensor]
Mode = Literal["loss", "features", "loss_from_features", "surrogate"]


class ContrastiveObjective(nn.Module):
    def __init__(self, model: MultiTower, loss: nn.Module, image_normalizer: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        # uint8 images from the data workers are finished here, on the training device (data/augment.py)
        self.image_normalizer = image_normalizer
        self.last_logit_scale = torch.tensor(float("nan"))  # for logging, read outside forward

    def _encode(self, batch: Mapping[str, torch.Tensor]) -> Features:
        image = batch.get("image")
        if self.image_normalizer is not None and image is not None and image.dtype == torch.uint8:
            batch = {**batch, "image": self.image_normalizer(image)}
        return self.model(batch)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters the loss uses directly, outside the towers: the logit scale and bias."""
        return [p for p in (self.model.logit_scale, self.model.logit_bias) if p is not None and p.requires_grad]

    def forward(self, batch: Mapping[str, torch.Tensor], mode: Mode = "loss",
                feature_grads: Optional[Mapping[str, torch.Tensor]] = None,
                head_grads: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor | Features:
        """`loss`: batch -> loss. `features`: batch -> features. `loss_from_features`: cached features of the
        whole accumulated batch -> loss. `surrogate`: batch and the loss's gradient w.r.t. its features (and, for
        one micro-batch, w.r.t. the head parameters) -> a scalar whose backward sends exactly those gradients
        into the towers (and the head)."""
        if mode == "features":
            return self._encode(batch)
        if mode == "surrogate":
            assert feature_grads is not None
            features = self._encode(batch)
            surrogate = sum((features[key] * grad).sum() for key, grad in feature_grads.items())
            for param, grad in zip(self.head_parameters(), head_grads or ()):
                if grad is not None:
                    surrogate = surrogate + (param * grad).sum()
            return surrogate
        features = self._encode(batch) if mode == "loss" else dict(batch)
        scale = self.model.scale()
        self.last_logit_scale = scale.detach()
        # text is [B, D] or [B, P, D] (P positive captions); hard negatives, when the batch has them, are extra
        # text columns that are nobody's positive.
        return self.loss(features["image"], features["text"], scale, self.model.logit_bias,
                         negative_text_features=features.get("negative_text"))


def concat_features(parts: Sequence[Features]) -> Features:
    """The micro-batches' cached features as one batch of leaves that collect the loss's gradient."""
    return {key: torch.cat([p[key] for p in parts]).detach().requires_grad_() for key in parts[0]}


def split_grads(features: Features, grads: Mapping[str, Optional[torch.Tensor]], parts: Sequence[Features]
                ) -> list[Features]:
    """The gradient of each cached feature tensor, cut back into the micro-batches it came from."""
    sizes = [p["image"].shape[0] for p in parts]
    pieces = {key: torch.split(grads[key] if grads[key] is not None else torch.zeros_like(leaf), sizes)
              for key, leaf in features.items()}
    return [{key: pieces[key][i] for key in features} for i in range(len(parts))]
