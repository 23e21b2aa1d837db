"""The engine section of the run config: which engine runs the steps, and its DeepSpeed settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmpretrain.errors import ConfigError


@dataclass
class EngineConfig:
    """`local`: one process, plain PyTorch. `deepspeed`: one process or N (torchrun / srun), ZeRO 0-3."""

    name: Literal["local", "deepspeed"] = "local"
    deepspeed_config: str = "zero2"     # a name under configs/deepspeed/ or a path to a DeepSpeed JSON
    offload_optimizer: bool = False     # ZeRO >= 1: optimizer state in CPU memory

    def validate(self) -> None:
        # Whether the name or path exists is checked where it is read (engine.deepspeed.load_deepspeed_config);
        # offload against optim.impl spans two sections (engine.factory.optimizer_impl, called at config load).
        if self.name == "deepspeed" and not self.deepspeed_config.strip():
            raise ConfigError("engine.deepspeed_config is empty: name one under configs/deepspeed/ (zero0..zero3) "
                              "or give a path to a DeepSpeed JSON")
