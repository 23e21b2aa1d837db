"""The training objective as one module: towers -> features -> contrastive loss.

Engines wrap this module, not the bare model, so an engine that shards parameters (DeepSpeed ZeRO-3) gathers the
logit scale and bias together with the towers during forward: outside forward they may be empty partitions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmpretrain.models.multitower import MultiTower


class ContrastiveObjective(nn.Module):
    def __init__(self, model: MultiTower, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.last_logit_scale = torch.tensor(float("nan"))  # for logging, read outside forward

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        features = self.model(batch)
        scale = self.model.scale()
        self.last_logit_scale = scale.detach()
        # text is [B, D] or [B, P, D] (P positive captions); hard negatives, when the batch has them, are extra
        # text columns that are nobody's positive.
        return self.loss(features["image"], features["text"], scale, self.model.logit_bias,
                         negative_text_features=features.get("negative_text"))
