"""The single-process engine: plain PyTorch, fp32 or bf16 autocast, gradient clipping."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

from mmpretrain.engine.base import EngineBase, StepReport
from mmpretrain.engine.objective import ContrastiveObjective
from mmpretrain.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available (train.device=auto or cpu runs "
                              "on the CPU)")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def load_model_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """`model.load_state_dict`, with a checkpoint of another model reported in one line, not one per key."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        example = (f"{shapes[0]}: {tuple(state[shapes[0]].shape)} in the checkpoint, {tuple(own[shapes[0]].shape)} "
                   "here" if shapes else (missing or unexpected)[0])
        raise ConfigError(f"the checkpoint holds another model than model.name builds: {len(shapes)} shape "
                          f"mismatches, {len(missing)} missing and {len(unexpected)} unexpected keys (e.g. "
                          f"{example}); resume with the run's own model config")
    model.load_state_dict(state)


class LocalEngine(EngineBase):
    """Owns the objective, optimizer and schedule of a one-process run; its whole state is one state dict."""

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

    def _forward(self, batch: Any, **kwargs: Any) -> Any:
        with self._autocast:
            return self.objective(batch, **kwargs)

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _finish_step(self) -> StepReport:
        # The norm always (max_norm inf: measured, not clipped); a norm that is not finite is not applied.
        norm = float(nn.utils.clip_grad_norm_(self.objective.parameters(), self.grad_clip or float("inf")))
        if not math.isfinite(norm):
            self._skip_step()
            return StepReport(finite=False, applied=False, grad_norm=norm)
        self.optimizer.step()
        self.scheduler.step()
        return StepReport(grad_norm=norm)

    def _skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module]:
        """The whole model, for evaluation and export (trivial here; ZeRO-3 must gather it first)."""
        yield self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "optimizer" not in state:
            raise ConfigError("the checkpoint holds no optimizer state of the local engine (it was written under "
                              "engine.name=deepspeed, whose state is in its step folder): resume it with "
                              "engine.name=deepspeed")
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
