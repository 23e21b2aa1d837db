"""The training objective as one module: towers -> features -> the weighted sum of every pair's contrastive loss.

Each contrasted pair (models/pairs.py) has its own loss module (softmax or sigmoid) and head (scale, bias). A
modality that may be missing from a sample arrives with a `<modality>_mask` batch entry (True: present); a pair's
loss then sees only the samples that have both of its modalities (losses/modules.py, exact across ranks).

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

from mmpretrain.losses.modules import LossConfig, build_loss
from mmpretrain.models.multitower import MultiTower
from mmpretrain.models.pairs import Pair

Features = dict[str, torch.Tensor]
Mode = Literal["loss", "features", "loss_from_features", "surrogate"]


MASK_SUFFIX = "_mask"


def presence_mask(batch: Mapping[str, torch.Tensor], pair: Pair) -> Optional[torch.Tensor]:
    """Which samples have both modalities of `pair` (None: all of them)."""
    masks = [batch[m + MASK_SUFFIX] for m in (pair.first, pair.second) if m + MASK_SUFFIX in batch]
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks[0] & masks[1]


class ContrastiveObjective(nn.Module):
    def __init__(self, model: MultiTower, loss: nn.Module | Mapping[str, nn.Module],
                 image_normalizer: Optional[nn.Module] = None) -> None:
        """`loss`: one loss module per pair key (`build_pair_losses`), or one module for every pair."""
        super().__init__()
        self.model = model
        keys = [pair.key for pair in model.pairs]
        losses = dict(loss) if isinstance(loss, Mapping) else {key: loss for key in keys}
        if sorted(losses) != sorted(keys):
            raise ValueError(f"losses for pairs {sorted(losses)}, the model contrasts {sorted(keys)}")
        self.losses = nn.ModuleDict(losses)
        # uint8 images from the data workers are finished here, on the training device (data/augment.py)
        self.image_normalizer = image_normalizer
        self.last_logit_scale = torch.tensor(float("nan"))  # for logging (the first pair's), read outside forward
        self.last_pair_stats: dict[str, torch.Tensor] = {}  # per pair: loss, logit scale (several pairs only)

    def _encode(self, batch: Mapping[str, torch.Tensor]) -> Features:
        """The towers' features, with the batch's presence masks carried along (GradCache caches both)."""
        image = batch.get("image")
        if self.image_normalizer is not None and image is not None and image.dtype == torch.uint8:
            batch = {**batch, "image": self.image_normalizer(image)}
        masks = {k: v for k, v in batch.items() if k.endswith(MASK_SUFFIX)}
        return {**self.model(batch), **masks}

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters the loss uses directly, outside the towers: every pair's logit scale and bias."""
        return self.model.head_parameters()

    def _pairs_loss(self, features: Features) -> torch.Tensor:
        total: Optional[torch.Tensor] = None
        stats: dict[str, torch.Tensor] = {}
        for index, pair in enumerate(self.model.pairs):
            bias = self.model.head(pair)[1]
            scale = self.model.scale(pair)
            if index == 0:
                self.last_logit_scale = scale.detach()  # the first pair's is the run's `logit_scale` metric
            # text is [B, D] or [B, P, D] (P positive captions); hard negatives, when the batch has them, are
            # extra text columns that are nobody's positive (text is always a pair's second member).
            negatives = features.get("negative_text") if pair.second == "text" else None
            mask = presence_mask(features, pair)
            loss = self.losses[pair.key](features[pair.first], features[pair.second], scale, bias,
                                         negative_text_features=negatives, **({} if mask is None else {"mask": mask}))
            total = pair.weight * loss if total is None else total + pair.weight * loss
            if len(self.model.pairs) > 1:
                stats[f"{pair.key}/loss"], stats[f"{pair.key}/logit_scale"] = loss.detach(), scale.detach()
        self.last_pair_stats = stats
        assert total is not None
        return total

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
        return self._pairs_loss(features)


def build_pair_losses(pairs: Sequence[Pair], chunk_size: Optional[int], impl: str = "gather") -> dict[str, nn.Module]:
    """One loss module per pair, of the pair's kind (`impl`: how a softmax pair reaches the global batch)."""
    return {pair.key: build_loss(LossConfig(name=pair.loss, chunk_size=chunk_size, impl=impl))  # type: ignore[arg-type]
            for pair in pairs}


def concat_features(parts: Sequence[Features]) -> Features:
    """The micro-batches' cached features as one batch of leaves that collect the loss's gradient (presence
    masks are concatenated as they are: they have no gradient)."""
    joined = {key: torch.cat([p[key] for p in parts]).detach() for key in parts[0]}
    return {key: value.requires_grad_() if value.is_floating_point() else value for key, value in joined.items()}


def split_grads(features: Features, grads: Mapping[str, Optional[torch.Tensor]], parts: Sequence[Features]
                ) -> list[Features]:
    """The gradient of each cached feature tensor (`grads` names the ones that have one), cut back into the
    micro-batches it came from."""
    sizes = [next(iter(p.values())).shape[0] for p in parts]
    pieces = {key: torch.split(grads[key] if grads[key] is not None else torch.zeros_like(features[key]), sizes)
              for key in grads}
    return [{key: pieces[key][i] for key in grads} for i in range(len(parts))]
