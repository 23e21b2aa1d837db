"""Thin nn.Module wrappers over the functional losses, with open_clip's call signature, distributed-aware.

Each rank passes its local features and gets its share of the global-batch loss (open_clip's per-rank value);
the mean over ranks is the global loss, and gradients reach every rank's features through the collectives.

Masks. `forward(..., mask=...)` takes a `[B]` bool tensor, True where the sample has both modalities of the pair;
the loss is then the loss of the global batch restricted to its complete pairs (with their positives and hard
negatives; a masked-out sample's hard negatives are dropped with it), exactly what the single-process loss
computes on the concatenation over ranks of `(image[mask], text[mask])`: softmax, the mean cross-entropy over
the valid rows of each direction; sigmoid, the sum over all valid pairs divided by N_valid (open_clip normalises
by the batch size). Ranks now hold different numbers of valid pairs, so each returns
`world_size * local_sum / N_valid_global` rather than a local mean: the mean over ranks is the global value and
averaging gradients over ranks (DDP, DeepSpeed) gives exactly its gradient. N_valid_global comes from one
gather of the counts (no gradient, one host sync). Every rank takes part in every collective, also one whose
mask is all False (its loss is 0 and its features get zero gradient); no valid pair anywhere gives loss 0 with
zero gradients, never NaN. `mask=None` is the unmasked path, unchanged. P and k must agree across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from mmpretrain.errors import ConfigError
from mmpretrain.losses.blockwise import check_chunk_size, logsumexp_kernel, softplus_kernel
from mmpretrain.losses.distributed import (ProcessGroup, all_gather_counts, all_gather_varlen_with_grad,
                                           all_gather_with_grad, pad_rows, rank_and_world_size,
                                           ring_shift_with_grad)
from mmpretrain.losses.functional import (as_negative_rows, as_positives, complete_pairs, negatives_per_sample,
                                          positive_logits, rows_per_rank, sigmoid_local_loss, softmax_local_loss,
                                          softmax_loss_from_lse, text_columns)
from mmpretrain.losses.ring import RingLayout, ring_pair_logsumexp


@dataclass
class LossConfig:
    """Which contrastive loss trains the towers.

    `siglip` needs the model's learnable bias (`init_logit_bias`, e.g. -10). `chunk_size` switches both losses
    to blockwise mode: logits are recomputed in backward in `[local batch, chunk_size]` blocks, so loss memory
    stops growing with the global batch (costs one extra matmul per block in backward).

    `impl` is how `clip` reaches the global batch: `gather` all-gathers the features (O(global batch x D) per rank
    for them and their gradients), `ring` passes text blocks from rank to rank instead (`losses/ring.py`), so
    per-rank memory is O(local batch x (D + chunk_size)) whatever the world size (`chunk_size: null` then scores a
    rank's whole block at once). Same loss and gradients; masks, several positives and hard negatives alike.
    `siglip` always runs on a ring and ignores `impl`.
    """

    name: Literal["clip", "siglip"] = "clip"
    chunk_size: Optional[int] = None
    impl: Literal["gather", "ring"] = "gather"

    def validate(self) -> None:
        if self.name not in _LOSSES:
            raise ConfigError(f"loss.name: unknown loss {self.name!r}; expected one of {sorted(_LOSSES)}")
        check_chunk_size(self.chunk_size, "loss.chunk_size")
        check_impl(self.impl, "loss.impl")


IMPLS = ("gather", "ring")


def check_impl(impl: str, key: str = "impl") -> None:
    """`gather` or `ring`; anything else a ConfigError (a ValueError) naming `key`."""
    if impl not in IMPLS:
        raise ConfigError(f"{key}: unknown implementation {impl!r}; expected one of {list(IMPLS)}")


class _GlobalBatchLoss(nn.Module):
    """What both losses are configured by: the blockwise chunk (None = plain) and the process group."""

    def __init__(self, chunk_size: Optional[int] = None, group: ProcessGroup = None) -> None:
        super().__init__()
        check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self.group = group

    def _valid_counts(self, complete_images: torch.Tensor) -> list[int]:
        """Every rank's number of complete pairs, gathered where the features live (the collective's device)."""
        return all_gather_counts(complete_images.shape[0], complete_images.device, self.group)


def _masked_inputs(mask: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor,
                   negative_text_features: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                            Optional[torch.Tensor], int]:
    """The complete pairs' images `[n, D]`, positives `[n, P, D]`, hard negatives `[n * k, D]`, and k (read off
    the full batch, before masking, so a rank with no valid sample still knows its share of the columns)."""
    negatives = as_negative_rows(negative_text_features, image_features.shape[-1])
    k = negatives_per_sample(negatives, image_features.shape[0])
    return (*complete_pairs(mask, image_features, as_positives(text_features), negatives), k)


def _scaled(counts: Sequence[int], rows_per_sample: int) -> list[int]:
    """Per-rank sample counts as per-rank row counts of a tensor holding `rows_per_sample` rows per sample."""
    return [n * rows_per_sample for n in counts]


class ClipLoss(_GlobalBatchLoss):
    """Softmax (CLIP / InfoNCE) loss over the global batch, features all-gathered with gradient (`impl="gather"`)
    or text blocks passed around a ring of ranks (`impl="ring"`, see `LossConfig` and `losses/ring.py`).

    `text_features` is `[B, D]` or `[B, P, D]` (P positives per image, soft target 1/P each);
    `negative_text_features` (`[B * k, D]` or `[B, k, D]`) are extra text columns for every image of every rank.
    `logit_bias` is accepted for signature compatibility and ignored: softmax is invariant to it.
    `mask` (`[B]` bool): see the module docstring; the complete pairs are gathered with variable-length
    all-gathers (padded to the longest rank, padding cut out), so no padding ever becomes a row or column; on the
    ring, blocks travel padded to the longest and each rank cuts the padding off the block it holds.
    """

    def __init__(self, chunk_size: Optional[int] = None, group: ProcessGroup = None, impl: str = "gather") -> None:
        super().__init__(chunk_size, group)
        check_impl(impl)
        self.impl = impl

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None, negative_text_features: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None:
            return self._masked(image_features, text_features, logit_scale, negative_text_features, mask)
        positives = as_positives(text_features)
        negatives = as_negative_rows(negative_text_features, image_features.shape[-1])
        if self.impl == "ring":
            batch, num_pos = positives.shape[:2]
            columns = text_columns(positives, negatives)
            layout = RingLayout.uniform(columns.shape[0], batch * num_pos, rank_and_world_size(self.group)[1])
            return self._ring(image_features, positives, columns, logit_scale, layout)
        all_images = all_gather_with_grad(image_features, self.group)
        all_columns = all_gather_with_grad(positives.reshape(-1, positives.shape[-1]), self.group)
        if negatives is not None:
            # Negatives go after all positives, so column order is irrelevant to the targets.
            all_columns = torch.cat([all_columns, all_gather_with_grad(negatives, self.group)], dim=0)
        return softmax_local_loss(image_features, positives, all_images, all_columns, logit_scale,
                                  lse=logsumexp_kernel(self.chunk_size))

    def _masked(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                negative_text_features: Optional[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        dim = image_features.shape[-1]
        images, positives, negatives, k = _masked_inputs(mask, image_features, text_features, negative_text_features)
        counts = self._valid_counts(images)
        rows = rows_per_rank(sum(counts), len(counts))
        if self.impl == "ring":
            layout = RingLayout.of_counts(counts, positives.shape[1], k)
            return self._ring(images, positives, text_columns(positives, negatives), logit_scale, layout, rows)
        all_images = all_gather_varlen_with_grad(images, counts, self.group)
        all_columns = all_gather_varlen_with_grad(positives.reshape(-1, dim), _scaled(counts, positives.shape[1]),
                                                  self.group)
        if negatives is not None:
            all_columns = torch.cat([all_columns, all_gather_varlen_with_grad(negatives, _scaled(counts, k),
                                                                              self.group)], dim=0)
        return softmax_local_loss(images, positives, all_images, all_columns, logit_scale,
                                  lse=logsumexp_kernel(self.chunk_size), rows=rows)

    def _ring(self, images: torch.Tensor, positives: torch.Tensor, columns: torch.Tensor, logit_scale: torch.Tensor,
              layout: RingLayout, rows: Optional[float] = None) -> torch.Tensor:
        """`softmax_local_loss` with both all-pairs terms from the ring kernel; `columns` = `text_columns`."""
        # The positive term first: autograd runs the later node first, so the ring's backward (the peak) is over
        # before the positive term's `[B, D]` gradients exist, and those are added in place into the features'.
        positive = positive_logits(images, positives, logit_scale)
        image_lse, caption_lse = ring_pair_logsumexp(images, columns, logit_scale, layout, self.chunk_size,
                                                     self.group)
        return softmax_loss_from_lse(image_lse, caption_lse, positive, rows)


class SigLipLoss(_GlobalBatchLoss):
    """Pairwise sigmoid (SigLIP) loss over the global batch; text columns travel around a ring of ranks.

    No rank ever computes more than `[B, B * (P + k)]` logits at a time (`[B, chunk_size]` in blockwise mode):
    step 0 scores this rank's own block (with its positives), then the text columns of the other ranks arrive one
    neighbour at a time and are scored as negatives. Same shape conventions as `ClipLoss`; `logit_bias=None`
    means no bias. `mask` (`[B]` bool): see the module docstring; the ring then carries each rank's complete
    pairs' columns padded to the longest rank's, and since every rank knows all counts (and so whose block it
    holds at each step) it cuts the padding off before scoring: padding is never a pair.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None, negative_text_features: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None:
            return self._masked(image_features, text_features, logit_scale, logit_bias, negative_text_features,
                                mask)
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

    def _masked(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor], negative_text_features: Optional[torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
        rank, world_size = rank_and_world_size(self.group)
        images, positives, negatives, k = _masked_inputs(mask, image_features, text_features, negative_text_features)
        counts = self._valid_counts(images)
        bias = image_features.new_zeros(()) if logit_bias is None else logit_bias
        negative_sum = softplus_kernel(self.chunk_size)
        rows = rows_per_rank(sum(counts), world_size)
        columns = text_columns(positives, negatives)
        loss = sigmoid_local_loss(images, positives, columns, logit_scale, bias, negative_sum, rows)
        column_counts = _scaled(counts, positives.shape[1] + k)
        if max(column_counts) == 0:  # nothing anywhere to send; every rank sees the same counts and skips alike
            return loss
        travelling = pad_rows(columns, max(column_counts))
        for step in range(1, world_size):
            travelling = ring_shift_with_grad(travelling, self.group)
            owner = (rank - step) % world_size  # the block arrives one hop per step from the left
            loss = loss + negative_sum(images, travelling[:column_counts[owner]], logit_scale, bias) / rows
        return loss


_LOSSES: dict[str, type[_GlobalBatchLoss]] = {"clip": ClipLoss, "siglip": SigLipLoss}


def build_loss(config: LossConfig) -> nn.Module:
    """The loss module a config names (the default process group is used when one is initialised)."""
    config.validate()
    if config.name == "clip":
        return ClipLoss(chunk_size=config.chunk_size, impl=config.impl)
    return _LOSSES[config.name](chunk_size=config.chunk_size)
