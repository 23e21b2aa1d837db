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


# Dimensions of one item of each modality: an image is [3, H, W], a caption is [context_length] token ids.
# Anything in front of them is batch: [B, ...] or, for several captions per sample, [B, P, ...].
ITEM_NDIM = {"image": 3, "text": 1}

# Batch keys encoded by another modality's tower: hard-negative captions go through the text tower.
ENCODED_AS = {"negative_text": "text"}


class MultiTower(nn.Module):
    """Towers keyed by modality ("image", "text", later "audio") plus the learnable logit scale / bias."""

    def __init__(self, towers: Mapping[str, nn.Module], logit_scale: nn.Parameter,
                 logit_bias: Optional[nn.Parameter] = None, max_logit_scale: float = 100.0,
                 item_ndim: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(dict(towers))
        self.item_ndim = dict(ITEM_NDIM if item_ndim is None else item_ndim)
        self.logit_scale = logit_scale          # stored as log(scale), as in open_clip
        self.logit_bias = logit_bias
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def modalities(self) -> list[str]:
        return list(self.towers.keys())

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed one modality's items, [..., *item] -> [..., D]; L2-normalized unless asked otherwise."""
        item_ndim = self.item_ndim.get(modality, x.dim() - 1)
        leading = x.shape[:x.dim() - item_ndim]
        features = self.towers[modality](x.reshape(-1, *x.shape[x.dim() - item_ndim:]))
        features = features.reshape(*leading, features.shape[-1])
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalized embeddings for every batch entry a tower can encode (modalities and hard negatives)."""
        return {key: self.encode(ENCODED_AS.get(key, key), x) for key, x in batch.items()
                if ENCODED_AS.get(key, key) in self.towers}

    def scale(self) -> torch.Tensor:
        """The exponentiated logit scale, kept in [1, max] as CLIP does (at 100) so it cannot run away.

        Clamped functionally rather than in place after the optimizer step: under DeepSpeed the optimizer owns
        an fp32 master copy that an in-place clamp of the parameter would not reach.
        """
        return self.logit_scale.clamp(0, self.max_log_scale).exp()
