"""The single-process engine: forward, backward, clip, step. The DeepSpeed engine offers the same methods, so the
training loop does not know which one it drives."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from mmpretrain.engine.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from mmpretrain.engine.objective import ContrastiveObjective, concat_features, split_grads


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


class EngineReadouts:
    """What the loop logs, read the same way from every engine."""

    objective: ContrastiveObjective
    optimizer: torch.optim.Optimizer

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def logit_scale(self) -> float:
        """The temperature scale used in the last forward (read from there: under ZeRO-3 the parameter
        itself is an empty partition outside forward)."""
        return float(self.objective.last_logit_scale)


class LocalEngine(EngineReadouts):
    """Owns the objective, optimizer and schedule of a one-process run."""

    collective_forward = False  # a forward involves no other process

    def __init__(self, objective: ContrastiveObjective, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                 precision: str = "fp32", grad_clip: Optional[float] = None) -> None:
        self.objective = objective.to(device)
        self.model = objective.model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.grad_clip = grad_clip
        self._autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                          else contextlib.nullcontext())

    def train_step(self, batches: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step on the micro-batches `batches`, contrasted as ONE batch (GradCache when there
        are several); returns the loss, still on device (reading it is a sync point)."""
        self.objective.train()
        batches = [{k: v.to(self.device, non_blocking=True) for k, v in b.items()} for b in batches]
        self.optimizer.zero_grad(set_to_none=True)
        if len(batches) == 1:
            with self._autocast:
                loss = self.objective(batches[0])
            loss.backward()
        else:
            loss = self._grad_cache(batches)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.objective.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def _grad_cache(self, batches: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Features of every micro-batch without a graph; the loss over all of them and its gradient w.r.t.
        the features; then each micro-batch again with a graph, backpropagating its slice of that gradient.
        Memory is one micro-batch's activations; the gradient is the whole batch's."""
        with torch.no_grad(), self._autocast:
            parts = [self.objective(batch, mode="features") for batch in batches]
        features = concat_features(parts)
        with self._autocast:
            loss = self.objective(features, mode="loss_from_features")
        loss.backward()  # into the cached features, the logit scale and the bias
        for batch, grads in zip(batches, split_grads(features, parts)):
            with self._autocast:
                self.objective(batch, mode="surrogate", feature_grads=grads).backward()
        return loss

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module]:
        """The whole model, for evaluation and export (trivial here; ZeRO-3 must gather it first)."""
        yield self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def save(self, directory: Path, step: int, extra: dict[str, Any], keep: int) -> None:
        save_checkpoint(directory, step, {**self.state_dict(), "step": step, **extra}, keep)

    def restore(self, directory: Path, resume: str) -> Optional[tuple[Path, int, Any]]:
        """Load the checkpoint `resume` names; returns (path, step, data stream state), or None when `latest`
        finds none yet (a fresh start)."""
        path = resolve_resume(directory, resume)
        if path is None:
            return None
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return path, int(state["step"]), state.get("data")
