"""The single-process engine: forward, loss, backward, clip, step. The DeepSpeed engine offers the same
methods, so the training loop does not know which one it drives."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from mmpretrain.models.multitower import MultiTower


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


class LocalEngine:
    """Owns the model, optimizer and schedule of a one-process run."""

    def __init__(self, model: MultiTower, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                 precision: str = "fp32", grad_clip: Optional[float] = None) -> None:
        self.model = model.to(device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.grad_clip = grad_clip
        self._autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                          else contextlib.nullcontext())

    def train_step(self, batch: Mapping[str, torch.Tensor], loss_fn: nn.Module) -> torch.Tensor:
        """One optimizer step on `batch`; returns the loss, still on device (reading it is a sync point)."""
        self.model.train()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with self._autocast:
            features = self.model(batch)
            # text is [B, D] or [B, P, D] (P positive captions); hard negatives, when the batch has them, are
            # extra text columns that are nobody's positive.
            loss = loss_fn(features["image"], features["text"], self.model.logit_scale.exp(),
                           self.model.logit_bias, negative_text_features=features.get("negative_text"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.model.clamp_logit_scale()
        return loss.detach()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
