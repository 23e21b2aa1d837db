"""What the training loop does with a step whose loss or gradient norm is not finite: stop, or skip and count.

The engine reports every step (`Engine.last_step`, the same verdict on every rank); this guard turns the report
into the run's decision, so every rank stops (or goes on) at the same step, before any checkpoint of it.
"""

from __future__ import annotations

import logging
import math
from typing import Union

import torch

from mmpretrain.engine.dist import global_mean
from mmpretrain.engine.metrics import MetricsLog, NoMetrics
from mmpretrain.errors import TrainingError
from mmpretrain.run import Run

log = logging.getLogger(__name__)


class NonFiniteGuard:
    """What to do with a step whose loss or gradient norm was not finite (optim.nonfinite): stop the run there, or
    count it as skipped (the engine did not apply it) and go on, up to optim.max_skipped_steps. A step the engine
    could not help applying (DeepSpeed reports the gradient norm after the update) always stops the run."""

    def __init__(self, run: Run) -> None:
        self.run, self.skipped = run, 0

    def check(self, step: int, loss: torch.Tensor, metrics: Union[MetricsLog, NoMetrics]) -> None:
        report = self.run.engine.last_step
        if report.finite:
            return
        optim = self.run.config.optim
        value = global_mean(loss)  # a collective, reached by every rank at this step
        what = (f"loss {value}" if report.grad_norm is None or not math.isfinite(value)
                else f"gradient norm {report.grad_norm}")
        self.skipped += int(not report.applied)
        if optim.nonfinite == "skip" and not report.applied and self.skipped <= optim.max_skipped_steps:
            if self.run.process.is_main:
                log.warning("step %d: %s is not finite: step skipped (%d of at most %d)", step, what, self.skipped,
                            optim.max_skipped_steps)
            return
        metrics.write(step, loss=value, **{"train/skipped_steps": self.skipped,
                                           "train/nonfinite_step": step})
        if optim.nonfinite == "skip" and not report.applied:
            reason = f"more than optim.max_skipped_steps={optim.max_skipped_steps} steps skipped"
        elif optim.nonfinite == "skip":
            reason = "the update was already applied (DeepSpeed reports the gradient norm after it)"
        else:
            reason = "optim.nonfinite=stop (or skip, to drop such steps)"
        last = self.run.checkpointer.last_saved
        kept = f"the last checkpoint is step {last}" if last else "no checkpoint was written"
        raise TrainingError(f"step {step}: {what} is not finite, the run diverged; stopped before any checkpoint of "
                            f"it ({reason}; {kept}; lower optim.lr?)")
