"""Thin nn.Module wrappers over the functional losses, with open_clip's call signature, distributed-aware.

Each rank passes its local features and gets its share of the global-batch loss (open_clip's per-rank value);
the mean over ranks is the global loss, and gradients reach every rank's features through the collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from mmpretrain.errors import ConfigError
from mmpretrain.losses.blockwise import check_chunk_size, logsumexp_kernel, softplus_kernel
from mmpretrain.losses.distributed import (ProcessGroup, all_gather_with_grad, rank_and_world_size,
                                           ring_shift_with_grad)
from mmpretrain.losses.functional import (as_negative_rows, as_positives, sigmoid_local_loss, softmax_local_loss,
                                          text_columns)


@dataclass
class LossConfig:
    """Which contrastive loss trains the towers.

    `siglip` needs the model's learnable bias (`init_logit_bias`, e.g. -10). `chunk_size` switches both losses
    to blockwise mode: logits are recomputed in backward in `[local batch, chunk_size]` blocks, so loss memory
    stops growing with the global batch (costs one extra matmul per block in backward).
    """

    name: Literal["clip", "siglip"] = "clip"
    chunk_size: Optional[int] = None

    def validate(self) -> None:
        if self.name not in _LOSSES:
            raise ConfigError(f"loss.name: unknown loss {self.name!r}; expected one of {sorted(_LOSSES)}")
        check_chunk_size(self.chunk_size, "loss.chunk_size")


class _GlobalBatchLoss(nn.Module):
    """What both losses are configured by: the blockwise chunk (None = plain) and the process group."""

    def __init__(self, chunk_size: Optional[int] = None, group: ProcessGroup = None) -> None:
        super().__init__()
        check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self.group = group


class ClipLoss(_GlobalBatchLoss):
    """Softmax (CLIP / InfoNCE) loss over the global batch, features all-gathered with gradient.

    `text_features` is `[B, D]` or `[B, P, D]` (P positives per image, soft target 1/P each);
    `negative_text_features` (`[B * k, D]` or `[B, k, D]`) are extra text columns for every image of every rank.
    `logit_bias` is accepted for signature compatibility and ignored: softmax is invariant to it.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None,
                negative_text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        positives = as_positives(text_features)
        negatives = as_negative_rows(negative_text_features, image_features.shape[-1])
        all_images = all_gather_with_grad(image_features, self.group)
        all_columns = all_gather_with_grad(positives.reshape(-1, positives.shape[-1]), self.group)
        if negatives is not None:
            # Negatives go after all positives, so column order is irrelevant to the targets.
            all_columns = torch.cat([all_columns, all_gather_with_grad(negatives, self.group)], dim=0)
        return softmax_local_loss(image_features, positives, all_images, all_columns, logit_scale,
                                  lse=logsumexp_kernel(self.chunk_size))


class SigLipLoss(_GlobalBatchLoss):
    """Pairwise sigmoid (SigLIP) loss over the global batch; text columns travel around a ring of ranks.

    No rank ever computes more than `[B, B * (P + k)]` logits at a time (`[B, chunk_size]` in blockwise mode):
    step 0 scores this rank's own block (with its positives), then the text columns of the other ranks arrive one
    neighbour at a time and are scored as negatives. Same shape conventions as `ClipLoss`; `logit_bias=None`
    means no bias.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None,
                negative_text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        positives = as_positives(text_features)
        negatives = as_negative_rows(negative_text_features, image_features.shape[-1])
        bias = image_features.new_zeros(()) if logit_bias is None else logit_bias
        negative_sum = softplus_kernel(self.chunk_size)
        columns = text_columns(positives, negatives)
        loss = sigmoid_local_loss(image_features, positives, columns, logit_scale, bias, negative_sum)
        world_size = rank_and_world_size(self.group)[1]
        for _ in range(world_size - 1):
            columns = ring_shift_with_grad(columns, self.group)
            loss = loss + negative_sum(image_features, columns, logit_scale, bias) / image_features.shape[0]
        return loss


_LOSSES: dict[str, type[_GlobalBatchLoss]] = {"clip": ClipLoss, "siglip": SigLipLoss}


def build_loss(config: LossConfig) -> nn.Module:
    """The loss module a config names (the default process group is used when one is initialised)."""
    config.validate()
    return _LOSSES[config.name](chunk_size=config.chunk_size)
