"""What every engine is: the Engine protocol the loop and the Checkpointer use, and the one step algorithm.

An engine owns the objective (towers + loss), the optimizer and the schedule, and turns micro-batches into one
optimizer step. The step algorithm lives here once, over four small hooks each engine fills in (`_forward`,
`_backward`, `_finish_step`, `_zero_grad`); the engines differ only in how those are done (plain PyTorch with
autocast, or DeepSpeed's engine calls).

Several micro-batches are contrasted as ONE batch (GradCache, as open_clip's accum-freq does): features of
every micro-batch without a graph; the loss over all of them and its gradient w.r.t. the features; then each
micro-batch again with a graph, backpropagating its slice of that gradient. Memory is one micro-batch's
activations; the gradient is the whole batch's. Every pass goes through the engine's module (the objective's
forward modes), so an engine that shards parameters gathers them in each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn

from mmpretrain.engine.dist import all_true
from mmpretrain.engine.rng import RngSnapshot
from mmpretrain.engine.objective import ContrastiveObjective, concat_features, split_grads

Batch = Mapping[str, torch.Tensor]


class Engine(Protocol):
    """What the training loop and the Checkpointer use of an engine."""

    device: torch.device
    collective_forward: bool  # True when a forward involves every rank (ZeRO-3): evaluation must run on all
    last_step: "StepReport"   # how the last train_step went (the same on every rank)

    def train_step(self, batches: Sequence[Batch]) -> torch.Tensor: ...

    def weights_finite(self) -> bool: ...

    def full_model(self) -> contextlib.AbstractContextManager[nn.Module]: ...

    @property
    def lr(self) -> float: ...

    @property
    def logit_scale(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def save_shards(self, folder: Path) -> None: ...

    def load_shards(self, folder: Path) -> None: ...


@dataclass(frozen=True)
class StepReport:
    """How one step went, the same on every rank. `finite`: the loss on every rank and the gradient norm (where
    known) were finite. `applied`: the optimizer update was made. A step whose loss is not finite is never applied
    (no backward, no update); one whose gradient norm is not finite is not applied by an engine that sees the norm
    before the update (local), and is applied by one that reports it only afterwards (DeepSpeed)."""

    finite: bool = True
    applied: bool = True
    grad_norm: Optional[float] = None  # None: not known (DeepSpeed without a reported norm, or no backward)


class EngineBase:
    """The step algorithm and the readouts; subclasses provide the hooks and the state."""

    objective: ContrastiveObjective
    optimizer: torch.optim.Optimizer
    device: torch.device
    collective_forward = False
    last_step: StepReport = StepReport()

    # -- hooks ---------------------------------------------------------------------------------------------------

    def _forward(self, batch: Any, **kwargs: Any) -> Any:
        """The objective's forward (any mode), as this engine runs it."""
        raise NotImplementedError

    def _backward(self, loss: torch.Tensor) -> None:
        """Accumulate `loss`'s gradient (each pass of a step adds to the same gradients, unscaled)."""
        raise NotImplementedError

    def _finish_step(self) -> StepReport:
        """Clip, step the optimizer and the schedule, after the last backward of a step; report the global
        gradient norm (computed even without clipping, where the engine can) and whether the update was made."""
        raise NotImplementedError

    def _skip_step(self) -> None:
        """A step whose loss is not finite on some rank: no backward, no update; the schedule still advances (the
        lr stays a function of the step number)."""
        raise NotImplementedError

    def _zero_grad(self) -> None:
        """Clear gradients before a step (engines that clear them themselves do nothing)."""

    def _loss_from_features(self, features: Any) -> torch.Tensor:
        """The loss over cached features; its gradient is taken with autograd.grad, not an engine backward, so
        an engine that tracks its backward passes must not see this forward."""
        return self._forward(features, mode="loss_from_features")

    # -- the algorithm -------------------------------------------------------------------------------------------

    def train_step(self, batches: Sequence[Batch]) -> torch.Tensor:
        """One optimizer step on the micro-batches `batches`, contrasted as ONE batch; returns the loss, still on
        the device (reading it is a sync point)."""
        self.objective.train()
        batches = [{k: v.to(self.device, non_blocking=True) for k, v in b.items()} for b in batches]
        self._zero_grad()
        if len(batches) == 1:
            loss = self._forward(batches[0])
            if self._loss_finite(loss):
                self._backward(loss)
        else:
            loss = self._grad_cache(batches)
        if self.last_step.finite:
            self.last_step = self._finish_step()
        else:
            self._skip_step()
        return loss.detach()

    def _loss_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (one all-reduce per step, a sync point); records a step that
        is not as not finite and not applied, before any backward, so that every rank skips it together."""
        finite = all_true(bool(torch.isfinite(loss.detach()).all()))
        self.last_step = StepReport() if finite else StepReport(finite=False, applied=False)
        return finite

    def _grad_cache(self, batches: Sequence[Batch]) -> torch.Tensor:
        # Each micro-batch's surrogate pass replays the random draws of its features pass (SpecAugment, dropout)
        snapshots, parts = [], []
        with torch.no_grad():
            for batch in batches:
                snapshots.append(RngSnapshot.take(self.device))
                parts.append(self._forward(batch, mode="features"))
        after = RngSnapshot.take(self.device)
        features = concat_features(parts)
        loss = self._loss_from_features(features)
        if not self._loss_finite(loss):
            return loss
        # The loss's gradient w.r.t. the cached features and the head (logit scale, bias), taken here rather than
        # by a backward of its own: every backward the engine sees then reaches every parameter. (ZeRO-3 copies
        # the first backward's gradients of a step into its buffers and adds the later ones; a first backward
        # that reached the head alone left the towers' buffers holding the previous step's gradients.)
        head = self.objective.head_parameters()
        leaves = {key: value for key, value in features.items() if value.requires_grad}  # not the presence masks
        grads = torch.autograd.grad(loss, [*leaves.values(), *head], allow_unused=True)
        feature_grads = dict(zip(leaves, grads[:len(leaves)]))
        head_grads = grads[len(leaves):]
        for index, (batch, micro) in enumerate(zip(batches, split_grads(features, feature_grads, parts))):
            snapshots[index].restore(self.device)
            self._backward(self._forward(batch, mode="surrogate", feature_grads=micro,
                                         head_grads=head_grads if index == 0 else None))
        after.restore(self.device)  # as if each micro-batch had been drawn once
        return loss

    # -- readouts ------------------------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def logit_scale(self) -> float:
        """The temperature scale used in the last forward (read from there: under ZeRO-3 the parameter itself is
        an empty partition outside forward)."""
        return float(self.objective.last_logit_scale)

    def weights_finite(self) -> bool:
        """Whether every parameter this rank holds is finite (checked before a checkpoint is written; the loop
        combines the ranks' answers)."""
        return all(bool(torch.isfinite(p.detach()).all()) for p in self.objective.parameters())

    # -- state without shards (overridden by engines that keep per-rank state) -----------------------------------

    def save_shards(self, folder: Path) -> None:
        """Write per-rank state into `folder` (every rank calls it); nothing for an engine without any."""

    def load_shards(self, folder: Path) -> None:
        """Read what `save_shards` wrote."""
