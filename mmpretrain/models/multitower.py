"""A dict of towers, one per modality, mapped into one normalized embedding space.

Adding a modality (audio) means adding a tower under a new key; the training loop and the losses only see
`{modality: embeddings}`. The contrastive head (temperature, and the sigmoid loss's bias) lives here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class MultiTower(nn.Module):
    """Towers keyed by modality ("image", "text", later "audio") plus the learnable logit scale / bias."""

    def __init__(self, towers: Mapping[str, nn.Module], logit_scale: nn.Parameter,
                 logit_bias: Optional[nn.Parameter] = None, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(dict(towers))
        self.logit_scale = logit_scale          # stored as log(scale), as in open_clip
        self.logit_bias = logit_bias
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def modalities(self) -> list[str]:
        return list(self.towers.keys())

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed one modality's batch; L2-normalized unless asked otherwise."""
        features = self.towers[modality](x)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalized embeddings for every modality that has both a tower and an entry in the batch."""
        return {m: self.encode(m, x) for m, x in batch.items() if m in self.towers}

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the temperature in [1, max]: CLIP clamps at 100 to stop the scale from running away."""
        self.logit_scale.clamp_(0, self.max_log_scale)
