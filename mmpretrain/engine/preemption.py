"""Preemption: SLURM sends SIGUSR1 (with `--signal`) or SIGTERM before it kills a job. We finish the current
step, save a checkpoint, and exit with REQUEUE_EXIT_CODE, which launch/'s sbatch script requeues on."""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist

from mmpretrain.engine.dist import collective_device, multi_process

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 124
_Handler = Union[Callable[[int, Optional[FrameType]], object], int, None]


class Preempted(Exception):
    """Raised by the training loop after the preemption checkpoint is safely written."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(f"preempted by {signal_name} after step {step}; checkpoint saved, exit "
                         f"{REQUEUE_EXIT_CODE} to be requeued (resume with --resume latest)")
        self.step = step


class PreemptionWatch:
    """Records SIGTERM / SIGUSR1 instead of dying; the loop polls `requested()` between steps.

    Idempotent: a signal that arrives twice (from SLURM and again from torchrun) still means one save.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[signal.Signals, _Handler] = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._record)

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            log.warning("received %s: will checkpoint after the current step and exit", self.signal_name)

    def requested(self) -> bool:
        """True on every rank once any rank was signalled, so all ranks stop at the same step.

        Distributed, this is a one-element all-reduce per step: a (cheap) sync point.
        """
        flag = self.signal_name is not None
        if multi_process():
            tensor = torch.tensor([1.0 if flag else 0.0], device=collective_device())
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = bool(tensor.item())
            if flag and self.signal_name is None:
                self.signal_name = "a signal on another rank"
        return flag

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "PreemptionWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
