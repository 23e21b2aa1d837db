"""Pick the engine a config names. deepspeed is imported only when it is asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mmpretrain.engine.base import Engine
from mmpretrain.engine.config import EngineConfig
from mmpretrain.engine.local import LocalEngine
from mmpretrain.engine.objective import ContrastiveObjective
from mmpretrain.engine.schedule import OptimConfig, build_torch_adamw, param_groups
from mmpretrain.errors import ConfigError


def check_world_size(config: EngineConfig, world_size: int) -> None:
    """Multi-process training needs the DeepSpeed engine; launchers call this before starting anything."""
    if config.name == "local" and world_size > 1:
        raise ConfigError(f"engine.name=local runs one process, but this job has {world_size}: "
                          "use engine.name=deepspeed for multi-process training")


def optimizer_impl(optim: OptimConfig, engine: EngineConfig) -> str:
    """`torch` or `deepspeed`, with `auto` resolved; the combinations that cannot run are refused here."""
    offload = engine.name == "deepspeed" and engine.offload_optimizer
    if engine.offload_optimizer and engine.name != "deepspeed":
        raise ConfigError("engine.offload_optimizer needs engine.name=deepspeed")
    if optim.impl == "torch" and offload:
        raise ConfigError("engine.offload_optimizer needs DeepSpeed's CPU AdamW (ZeRO-Offload refuses torch's): "
                          "set optim.impl=auto or optim.impl=deepspeed")
    if optim.impl == "auto":
        return "deepspeed" if offload else "torch"
    return optim.impl


def build_optimizer(model: nn.Module, optim: OptimConfig, engine: EngineConfig, device: torch.device
                    ) -> torch.optim.Optimizer:
    """AdamW without weight decay on gains, biases and the logit scale/bias, in the implementation asked for."""
    if optimizer_impl(optim, engine) == "torch":
        return build_torch_adamw(model, optim)
    from mmpretrain.engine.deepspeed import deepspeed_adamw

    on_cpu = engine.offload_optimizer or device.type != "cuda"
    return deepspeed_adamw(param_groups(model, optim.weight_decay), optim.lr, (optim.betas[0], optim.betas[1]),
                           optim.eps, on_cpu)


@dataclass(frozen=True)
class StepSettings:
    """How a step runs, from the run config's train/data/optim sections and the process layout."""

    device: torch.device
    precision: str = "fp32"
    grad_clip: Optional[float] = None
    micro_batch_size: int = 1          # per rank
    accum_steps: int = 1
    world_size: int = 1


def _check_precision(config: EngineConfig, step: StepSettings) -> None:
    if step.precision != "fp16":
        return
    if config.name == "local":
        raise ConfigError("train.precision=fp16 (with loss scaling) runs under engine.name=deepspeed; the "
                          "local engine offers fp32 and bf16")
    if step.device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device (DeepSpeed refuses fp16 on CPU): use bf16 "
                          "or fp32")


def _local(config: EngineConfig, objective: ContrastiveObjective, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, step: StepSettings) -> Engine:
    return LocalEngine(objective, optimizer, scheduler, step.device, step.precision, step.grad_clip)


def _deepspeed(config: EngineConfig, objective: ContrastiveObjective, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, step: StepSettings) -> Engine:
    from mmpretrain.engine.deepspeed import DeepSpeedEngine, build_deepspeed_config, load_deepspeed_config

    ds_config = build_deepspeed_config(load_deepspeed_config(config.deepspeed_config), step.micro_batch_size,
                                       step.precision, step.grad_clip, config.offload_optimizer, step.accum_steps)
    objective.to(step.device)
    return DeepSpeedEngine(objective, optimizer, scheduler, ds_config)


# engine.name -> builder. A new engine implements engine/base.py's hooks and registers here.
ENGINES: dict[str, Callable[..., Engine]] = {"local": _local, "deepspeed": _deepspeed}


def build_engine(config: EngineConfig, objective: ContrastiveObjective, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, step: StepSettings) -> Engine:
    check_world_size(config, step.world_size)
    _check_precision(config, step)
    return ENGINES[config.name](config, objective, optimizer, scheduler, step)
