"""The random state of the training process: what stochastic layers (SpecAugment, dropout, drop-path) draw from.

Two places need it held still. GradCache runs each micro-batch's forward twice (features without gradient, then
the surrogate with it): the second pass must draw the same masks as the first, or the gradients belong to other
features (`RngSnapshot`). And an exact resume must draw what the uninterrupted run would have drawn next, so every
rank's state is a checkpoint part (`RngState`). Data augmentation does not depend on either: it is seeded per sample
in the workers (data/stages.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RngSnapshot:
    """The CPU generator's state and, on a CUDA device, that device's."""

    cpu: torch.Tensor
    cuda: Optional[torch.Tensor] = None

    @staticmethod
    def take(device: torch.device) -> "RngSnapshot":
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return RngSnapshot(torch.random.get_rng_state(), cuda)

    def restore(self, device: torch.device) -> None:
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda, device)


class RngState:
    """Checkpoint part (per rank): this rank's generator state. A resume onto another number of ranks keeps the
    freshly seeded state (an elastic resume is not exact anyway) and says so."""

    def __init__(self, device: torch.device, rank: int, world_size: int) -> None:
        self.device, self.rank, self.world_size = device, rank, world_size

    def state_dict(self) -> dict[str, Any]:
        snapshot = RngSnapshot.take(self.device)
        return {"cpu": snapshot.cpu, "cuda": snapshot.cuda}

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        if len(states) != self.world_size:
            if self.rank == 0:
                log.warning("the checkpoint's random state is of %d rank(s), this run has %d: stochastic layers "
                            "(SpecAugment, dropout) draw from a fresh seed", len(states), self.world_size)
            return
        RngSnapshot(states[self.rank]["cpu"], states[self.rank]["cuda"]).restore(self.device)
