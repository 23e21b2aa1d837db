"""Optimizer and learning-rate schedule: AdamW with linear warmup then cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from mmpretrain.errors import ConfigError, require


@dataclass
class OptimConfig:
    """AdamW hyper-parameters and the warmup + cosine schedule."""

    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0            # cosine decays to lr * min_lr_ratio
    grad_clip: Optional[float] = 1.0     # max global grad norm; None disables clipping
    # AdamW implementation. torch: torch.optim.AdamW. deepspeed: DeepSpeedCPUAdam where the optimizer state is in
    # CPU memory (offload, or a CPU run), FusedAdam on CUDA. auto: deepspeed under engine.offload_optimizer (ZeRO-
    # Offload refuses other optimizers), torch otherwise.
    impl: Literal["auto", "torch", "deepspeed"] = "auto"
    # torch's AdamW as one fused kernel over every parameter (CPU and CUDA) instead of a Python loop of small
    # ops per tensor (torch's default off CUDA, and what open_clip_train runs). Same update up to rounding. On this
    # project's 2-core CPU: 4.6 ms instead of 16.5 ms per step for mmp-tiny-rn's 8.1M parameters (docs/BENCHMARKS.md,
    # "Training throughput"). Only for impl torch; false gives torch's default implementation.
    fused: bool = True
    # A step whose loss or gradient norm is not finite (NaN/inf) is never applied. stop: the run ends there with
    # exit 3, before any checkpoint of it is written. skip: the step is dropped (no optimizer update; the schedule
    # still advances), counted as train/skipped_steps, and the run goes on, up to max_skipped_steps in all.
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = 10

    def validate(self) -> None:
        require(self.lr > 0, "optim.lr", self.lr, "> 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"optim.betas: two values in [0, 1) expected, got {list(self.betas)}")
        require(self.eps > 0, "optim.eps", self.eps, "> 0")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        require(self.grad_clip is None or self.grad_clip >= 0, "optim.grad_clip", self.grad_clip,
                ">= 0, or null (0 and null: no clipping)")
        require(self.nonfinite in ("stop", "skip"), "optim.nonfinite", self.nonfinite, "'stop' or 'skip'")
        require(self.max_skipped_steps >= 0, "optim.max_skipped_steps", self.max_skipped_steps, ">= 0")


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, class tokens and the contrastive head's scale/bias are not decayed (as in CLIP)."""
    return param.ndim < 2 or "logit_scale" in name or "logit_bias" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_torch_adamw(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """torch's AdamW over the decay / no-decay groups (engine.factory.build_optimizer picks the implementation)."""
    config.validate()
    groups = param_groups(model, config.weight_decay)
    fused = config.fused and _fused_supported([p for g in groups for p in g["params"]])
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.betas[0], config.betas[1]), eps=config.eps,
                                  fused=fused or None)
    optimizer.register_load_state_dict_pre_hook(keep_own_implementation)
    return optimizer


IMPLEMENTATION_FLAGS = ("fused", "foreach")


def keep_own_implementation(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """A load_state_dict pre-hook: the saved param groups get this optimizer's `fused` / `foreach`.

    torch takes those flags from the saved groups, so a run resumed with another `optim.fused` would silently keep
    the checkpoint's implementation. With the flags replaced before torch reads them, torch also places the step
    counts where this implementation wants them (on the parameters' device under fused). Registered on the
    optimizer itself (not a subclass: DeepSpeed's ZeRO refuses optimizer types it does not know), so every engine
    restores through plain `load_state_dict`."""
    own = [{key: group.get(key) for key in IMPLEMENTATION_FLAGS} for group in optimizer.param_groups]
    return {**state_dict, "param_groups": [{**saved, **mine} for saved, mine in zip(state_dict["param_groups"], own)]}


def _fused_supported(params: list[torch.Tensor]) -> bool:
    """torch's fused AdamW takes floating-point parameters, all on CPU or all on CUDA (it groups them per
    device)."""
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        p.is_floating_point() for p in params)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at `step`: linear warmup from ~0, then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def apply_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set every param group's lr to the schedule's value at the scheduler's step, from its base lrs: after a
    restore, the optimizer's saved lrs (the old schedule's) give way to this run's `optim` settings."""
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, base, lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, lrs):
        group["initial_lr"], group["lr"] = base, lr
    scheduler._last_lr = lrs  # what get_last_lr() reports


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """warmup_cosine over the configured lr. A restored state brings back the step, not the old schedule: the
    base lrs stay this run's `optim.lr` and the lambda its warmup / min_lr_ratio / total steps, so a schedule
    changed at resume takes effect from the restored step (unchanged, it gives the same lrs as before)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> None:
        super().__init__(optimizer, lambda step: warmup_cosine(step, config.warmup_steps, total_steps,
                                                               config.min_lr_ratio))

    def load_state_dict(self, state_dict: dict) -> None:
        base_lrs = list(self.base_lrs)
        super().load_state_dict(state_dict)
        self.base_lrs = base_lrs
        apply_schedule(self)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> WarmupCosineLR:
    return WarmupCosineLR(optimizer, config, total_steps)
