"""Contrastive losses as pure functions of features: no modules, no collectives, testable in one process.

Conventions (open_clip's): features are L2-normalized by the caller and `logit_scale` is already exponentiated,
so a logit is `scale * <image, text> (+ bias)`.

Shapes used throughout:
- image features `[B, D]`;
- positive captions `[B, D]` (one per image) or `[B, P, D]` (P positives per image, all ranks the same P);
- hard-negative captions `[B * k, D]` or `[B, k, D]`: extra text columns that are never anyone's positive and
  have no text->image row of their own.

Each loss is split into a cheap *positive* term (one dot product per positive pair, computed locally with plain
autograd) and an expensive *all-pairs* term (logsumexp or softplus over every row x column), passed in as a
function so the same formula runs plain (`row_logsumexp`, `softplus_sum`) or blockwise (`mmpretrain.losses.blockwise`).

Per-sample masks: a `[B]` bool mask marks the samples holding both modalities of the pair. `complete_pairs`
keeps only those (with their positives and hard negatives) before anything is gathered, so the maths below only
ever sees complete pairs; what changes is the normaliser (`rows_per_rank`), because the ranks then hold different
numbers of rows: see the two local losses.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

# (rows [R, D], columns [M, D], scale) -> per-row logsumexp of the scaled logits, [R]
RowLogSumExp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (rows [R, D], columns [M, D], scale, bias) -> sum over all pairs of softplus(scale * <r, c> + bias), scalar
SoftplusSum = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def as_positives(text_features: torch.Tensor) -> torch.Tensor:
    """Positive captions as `[B, P, D]`: a `[B, D]` batch has one positive per image."""
    if text_features.dim() == 2:
        return text_features.unsqueeze(1)
    if text_features.dim() != 3:
        raise ValueError(f"text_features must be [B, D] or [B, P, D], got shape {tuple(text_features.shape)}")
    return text_features


def as_negative_rows(negative_text_features: Optional[torch.Tensor], dim: int) -> Optional[torch.Tensor]:
    """Hard negatives as `[B * k, D]` rows (or None): they are only ever columns, so their grouping is irrelevant."""
    if negative_text_features is None:
        return None
    if negative_text_features.shape[-1] != dim or negative_text_features.dim() not in (2, 3):
        raise ValueError(f"negative_text_features must be [B*k, {dim}] or [B, k, {dim}], "
                         f"got shape {tuple(negative_text_features.shape)}")
    return negative_text_features.reshape(-1, dim)


def negatives_per_sample(negatives: Optional[torch.Tensor], batch: int) -> int:
    """k, the hard negatives each sample brings (0 without negatives); `[B * k, D]` rows must split evenly."""
    if negatives is None or batch == 0:
        return 0
    if negatives.shape[0] % batch:
        raise ValueError(f"{negatives.shape[0]} hard-negative rows do not split evenly over a batch of {batch}")
    return negatives.shape[0] // batch


def complete_pairs(mask: torch.Tensor, image_features: torch.Tensor, positives: torch.Tensor,
                   negatives: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The masked-in samples' images `[n, D]`, positives `[n, P, D]` and hard negatives `[n * k, D]`.

    `mask` is `[B]` bool, True where the sample has both modalities; a masked-out sample's hard negatives go with
    it. Boolean indexing keeps the graph: masked-out rows get an exact zero gradient.
    """
    batch = image_features.shape[0]
    if mask.shape != (batch,) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape ({batch},), got {mask.dtype} {tuple(mask.shape)}")
    mask = mask.to(image_features.device)
    if negatives is not None:
        k = negatives_per_sample(negatives, batch)
        negatives = negatives.reshape(batch, k, negatives.shape[-1])[mask].reshape(-1, negatives.shape[-1])
    return image_features[mask], positives[mask], negatives


def text_columns(positives: torch.Tensor, negatives: Optional[torch.Tensor]) -> torch.Tensor:
    """The text side of the logits: positives flattened image-major (`[B * P, D]`), then the hard negatives."""
    flat = positives.reshape(-1, positives.shape[-1])
    return flat if negatives is None else torch.cat([flat, negatives], dim=0)


def row_logsumexp(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Plain per-row logsumexp of `scale * rows @ columns.T`; holds the whole `[R, M]` logit matrix."""
    return torch.logsumexp(scale * rows @ columns.T, dim=1)


def softplus_sum(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """Plain sum of `softplus(logit)` = `-logsigmoid(-logit)`: every pair scored as a negative."""
    return F.softplus(scale * rows @ columns.T + bias).sum()


def positive_logits(image_features: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`[B, P]` scaled logits of each image with its own positive captions (no bias)."""
    return scale * torch.einsum("bd,bpd->bp", image_features, positives)


def _mean_rows(values: torch.Tensor, rows: Optional[float]) -> torch.Tensor:
    """`values.mean()`, or their sum over `rows` when this rank's rows are a share of a larger normaliser."""
    return values.mean() if rows is None else values.sum() / rows


def rows_per_rank(num_valid: int, world_size: int) -> float:
    """The normaliser of a masked loss: N_valid / world_size, so rank shares `sum_r / (N_valid / W)` average to
    the global `sum / N_valid`. With no valid pair anywhere every sum is empty (zero): any positive normaliser
    then gives loss 0 with zero gradients, where N_valid itself would give 0/0 = NaN."""
    return max(num_valid, 1) / world_size


def softmax_local_loss(image_features: torch.Tensor, positives: torch.Tensor, all_image_features: torch.Tensor,
                       all_text_columns: torch.Tensor, logit_scale: torch.Tensor,
                       lse: RowLogSumExp = row_logsumexp, rows: Optional[float] = None) -> torch.Tensor:
    """One rank's share of the global InfoNCE loss: its own rows against every column of the global batch.

    `image_features [B, D]` and `positives [B, P, D]` are this rank's; `all_image_features [N, D]` and
    `all_text_columns [M, D]` are the gathered global batch (texts, then negatives). Image->text: soft target,
    uniform 1/P over the image's P positives, every text column (other positives included) in the denominator,
    i.e. the mean over positives of the cross-entropy. Text->image: each positive caption is a row whose one
    positive is its image; negatives have no row. With P = 1 and no negatives this is open_clip's
    `ClipLoss(local_loss=True)`, and its mean over ranks is the loss of the concatenated global batch.

    `rows=None` averages over this rank's rows, which is right when every rank holds the same number. With masks
    they do not, and `rows = rows_per_rank(N_valid, W)` divides the sums instead (caption rows by `rows * P`):
    the mean over ranks is then the mean cross-entropy over the N_valid complete pairs of the global batch.
    """
    batch, num_pos, dim = positives.shape
    return softmax_loss_from_lse(lse(image_features, all_text_columns, logit_scale),
                                 lse(positives.reshape(batch * num_pos, dim), all_image_features, logit_scale),
                                 positive_logits(image_features, positives, logit_scale), rows)


def softmax_loss_from_lse(image_lse: torch.Tensor, caption_lse: torch.Tensor, positive: torch.Tensor,
                          rows: Optional[float] = None) -> torch.Tensor:
    """`softmax_local_loss` once its two all-pairs terms are known, however they were computed.

    `image_lse [B]`: each local image's logsumexp over every text column of the global batch; `caption_lse
    [B * P]`: each local positive caption's (image-major) over every image of the global batch; `positive [B, P]`:
    `positive_logits`. Cross-entropy = logsumexp - target logit, the image's target being the mean of its P
    positive logits (soft target 1/P); the two directions are averaged. `rows`: as in `softmax_local_loss`.
    """
    num_pos = positive.shape[1]
    image_to_text = _mean_rows(image_lse - positive.mean(dim=1), rows)
    text_to_image = _mean_rows(caption_lse - positive.reshape(-1), None if rows is None else rows * num_pos)
    return (image_to_text + text_to_image) / 2


def pair_logsumexp(images: torch.Tensor, columns: torch.Tensor, num_captions: int,
                   scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both all-pairs terms of the softmax loss from one logit matrix `scale * images @ columns.T`: its row
    logsumexp `[R]` (image->text) and the column logsumexp of its first `num_captions` columns (text->image: a
    caption's row over the images is a column here). The plain, one-process form of `ring.ring_pair_logsumexp`
    when `images` and `columns` are the whole global batch; holds the `[R, M]` logits."""
    logits = scale * images @ columns.T
    return torch.logsumexp(logits, dim=1), torch.logsumexp(logits[:, :num_captions], dim=0)


def sigmoid_local_loss(image_features: torch.Tensor, positives: torch.Tensor, local_text_columns: torch.Tensor,
                       logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                       negative_sum: SoftplusSum = softplus_sum, rows: Optional[float] = None) -> torch.Tensor:
    """SigLIP loss of this rank's images against this rank's own text columns (the block holding the positives).

    Every pair is first scored as a negative (`softplus(l)`), then each positive pair is corrected by the exact
    identity `softplus(-l) - softplus(l) = -l`: "we know exactly where to find positives", so the all-pairs part
    needs no label matrix and is the same kernel as for blocks from other ranks. Normalised by the local batch
    size, as open_clip's `SigLipLoss`, or by `rows` (`rows_per_rank(N_valid, W)` under masks, see
    `softmax_local_loss`).
    """
    pos = positive_logits(image_features, positives, logit_scale) + logit_bias
    all_pairs = negative_sum(image_features, local_text_columns, logit_scale, logit_bias)
    return (all_pairs - pos.sum()) / (image_features.shape[0] if rows is None else rows)
