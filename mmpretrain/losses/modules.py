"""Thin nn.Module wrappers over the functional losses, with open_clip's call signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from mmpretrain.losses.functional import softmax_contrastive_loss


@dataclass
class LossConfig:
    """Which contrastive loss trains the towers."""

    name: Literal["clip"] = "clip"


class ClipLoss(nn.Module):
    """Softmax (CLIP / InfoNCE) loss: forward(image_features, text_features, logit_scale, logit_bias=None)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return softmax_contrastive_loss(image_features, text_features, logit_scale)


def build_loss(config: LossConfig) -> nn.Module:
    losses = {"clip": ClipLoss}
    return losses[config.name]()
