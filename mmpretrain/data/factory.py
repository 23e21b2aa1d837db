"""The one place that chooses the training batches of a rank: the shard stream (data/loader.py) or, with
`data.synthetic`, one pre-built random batch (data/synthetic.py). run.py calls `build_train_loader`; the training
loop sees only the `TrainBatches` interface, so it has no branch for either."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Protocol

import torch

from mmpretrain.data.config import DataConfig
from mmpretrain.data.loader import TrainLoader
from mmpretrain.data.stages import StageEnv
from mmpretrain.data.synthetic import SyntheticLoader
from mmpretrain.errors import DataError

log = logging.getLogger(__name__)


class StreamDescription(Protocol):
    def describe(self, run_samples: Optional[int] = None) -> str: ...


class TrainBatches(Protocol):
    """What the training loop and the Checkpointer use of a rank's batches."""

    info: StreamDescription

    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...

    def skip_report(self) -> tuple[dict[str, float], Optional[DataError]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, states: Sequence[Mapping[str, Any]]) -> None: ...


def build_train_loader(config: DataConfig, env: StageEnv, seed: int, rank: int, world_size: int,
                       device: torch.device,
                       all_sum: Optional[Callable[[list[int]], list[int]]] = None,
                       all_gather: Optional[Callable[[Any], list[Any]]] = None) -> TrainBatches:
    """The shard stream, or (data.synthetic) the synthetic batch placed on `device` (the real stream's batches
    stay on the CPU: the engine moves them). No collectives given: one process's (the loader's defaults)."""
    if not config.synthetic:
        collectives = {k: v for k, v in (("all_sum", all_sum), ("all_gather", all_gather)) if v is not None}
        return TrainLoader(config, env, seed, rank, world_size, **collectives)
    if rank == 0 and (config.train or config.sources):
        log.warning("data.synthetic=true: data.train / data.sources are ignored, no shard is read")
    return SyntheticLoader(config, env, seed, rank, world_size, device)
