"""A dict of towers, one per modality, mapped into one normalized embedding space.

Adding a modality means adding a tower under a new key; the training loop and the losses only see
`{modality: embeddings}`. The contrastive heads live here too: one learnable temperature (and, for a sigmoid pair,
a bias) per contrasted pair. The image-text pair's are open_clip's `logit_scale` / `logit_bias` (so checkpoints and
open_clip exports keep their keys); every other pair's are in `pair_scales` / `pair_biases`, keyed `audio_text`.

A locked tower (LiT) has no gradients and stays in eval mode whatever `train()` says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.models.pairs import Pair, default_init_scale

# Models built before pairs were configurable: one CLIP image-text pair on open_clip's head.
_IMAGE_TEXT_PAIR = Pair("image", "text", "clip", 1.0, default_init_scale("clip"), None)


# Dimensions of one item of each modality: an image is [3, H, W], a caption is [context_length] token ids, a clip
# is [samples] of waveform. Anything in front of them is batch: [B, ...] or, for several captions, [B, P, ...].
ITEM_NDIM = {"image": 3, "text": 1, "audio": 1}
IMAGE_TEXT = "image_text"

# Batch keys encoded by another modality's tower: hard-negative captions go through the text tower.
ENCODED_AS = {"negative_text": "text"}


class MultiTower(nn.Module):
    """Towers keyed by modality ("image", "text", later "audio") plus the learnable logit scale / bias."""

    def __init__(self, towers: Mapping[str, nn.Module], logit_scale: Optional[nn.Parameter],
                 logit_bias: Optional[nn.Parameter] = None, max_logit_scale: float = 100.0,
                 item_ndim: Optional[Mapping[str, int]] = None, pairs: Sequence[Pair] = (),
                 locked: Sequence[str] = ()) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(dict(towers))
        self.item_ndim = dict(ITEM_NDIM if item_ndim is None else item_ndim)
        self.logit_scale = logit_scale          # stored as log(scale), as in open_clip (the image-text pair's)
        self.logit_bias = logit_bias
        self.max_log_scale = math.log(max_logit_scale)
        self.pairs = list(pairs) or [_IMAGE_TEXT_PAIR]
        self.pair_scales = nn.ParameterDict({p.key: nn.Parameter(torch.full((1,), p.init_logit_scale))
                                             for p in self.pairs if p.key != IMAGE_TEXT})
        self.pair_biases = nn.ParameterDict({p.key: nn.Parameter(torch.full((1,), p.init_logit_bias))
                                             for p in self.pairs if p.key != IMAGE_TEXT
                                             and p.init_logit_bias is not None})
        self.locked = tuple(locked)
        for name in self.locked:
            self.towers[name].requires_grad_(False)
            self.towers[name].eval()

    @property
    def modalities(self) -> list[str]:
        return list(self.towers.keys())

    def train(self, mode: bool = True) -> "MultiTower":
        super().train(mode)
        for name in self.locked:  # LiT: a locked tower's dropout and norm statistics stay as loaded
            self.towers[name].eval()
        return self

    def head(self, pair: Pair) -> tuple[nn.Parameter, Optional[nn.Parameter]]:
        """The pair's (log scale, bias) parameters."""
        if pair.key == IMAGE_TEXT:
            if self.logit_scale is None:
                raise ValueError("this model has no image-text head")
            return self.logit_scale, self.logit_bias
        return self.pair_scales[pair.key], self.pair_biases[pair.key] if pair.key in self.pair_biases else None

    def head_parameters(self) -> list[nn.Parameter]:
        """Every pair's learnable scale and bias (the parameters the loss uses directly)."""
        return [p for pair in self.pairs for p in self.head(pair) if p is not None and p.requires_grad]

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed one modality's items, [..., *item] -> [..., D]; L2-normalized unless asked otherwise."""
        item_ndim = self.item_ndim.get(modality, x.dim() - 1)
        leading = x.shape[:x.dim() - item_ndim]
        with torch.set_grad_enabled(torch.is_grad_enabled() and modality not in self.locked):
            features = self.towers[modality](x.reshape(-1, *x.shape[x.dim() - item_ndim:]))
        features = features.reshape(*leading, features.shape[-1])
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalized embeddings for every batch entry a tower can encode (modalities and hard negatives)."""
        return {key: self.encode(ENCODED_AS.get(key, key), x) for key, x in batch.items()
                if ENCODED_AS.get(key, key) in self.towers}

    def scale(self, pair: Optional[Pair] = None) -> torch.Tensor:
        """The pair's (default: the first pair's) exponentiated logit scale, kept in [1, max] as CLIP does (at
        100) so it cannot run away.

        Clamped functionally rather than in place after the optimizer step: under DeepSpeed the optimizer owns
        an fp32 master copy that an in-place clamp of the parameter would not reach.
        """
        log_scale, _ = self.head(pair or self.pairs[0])
        return log_scale.clamp(0, self.max_log_scale).exp()
