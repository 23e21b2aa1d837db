"""The training loop: step -> log -> checkpoint -> evaluate -> preempt, over the parts `build_run` made.

The same loop runs as one process and as N (torchrun / srun): rank-specific work is explicit (rank 0 writes the
run directory, logs, keeps evaluation results), everything else is identical on every rank.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm import tqdm

from mmpretrain.config import RunConfig, config_to_dict
from mmpretrain.divergence import NonFiniteGuard
from mmpretrain.engine.allocator import apply_malloc_setting
from mmpretrain.engine.dist import all_true, barrier, detect_process, global_mean, init_distributed, shutdown
from mmpretrain.engine.base import Engine
from mmpretrain.engine.metrics import MetricsLog, NoMetrics
from mmpretrain.engine.preemption import Preempted, PreemptionWatch
from mmpretrain.errors import TrainingError
from mmpretrain.eval.harness import format_table, run_eval, write_results
from mmpretrain.run import Run, build_run

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    final_loss: float
    results: dict[str, float]


def train(config: RunConfig, resume: Optional[str] = None, overwrite: bool = False,
          allow_changes: Sequence[str] = ()) -> TrainResult:
    """Train `config` to `train.steps`, evaluating every `eval.every_steps` and at the end. At resume, a change
    that breaks exactness is refused unless `allow_changes` names its key (mmpretrain/resume.py)."""
    apply_malloc_setting(config.train.malloc)  # before any worker forks: they inherit it
    process = detect_process()
    init_distributed(process, require_group=config.engine.name == "deepspeed")
    try:
        run = build_run(config, process, resume, overwrite, allow_changes)
        try:
            return _loop(run, _restore(run, resume))
        finally:
            run.loader.close()  # its workers ignore SIGTERM (they leave preemption to us): stop them for good
            if run.lock is not None:
                run.lock.release()  # the run directory is free again, also after an error or a preemption
    finally:
        shutdown()


def _restore(run: Run, resume: Optional[str]) -> int:
    restored = run.checkpointer.restore(resume) if resume else None
    if restored is None:
        return 0
    path, step = restored
    if run.process.is_main:
        log.info("resumed from %s at step %d, data stream at the next unread sample", path, step)
    return step


def _loop(run: Run, start: int) -> TrainResult:
    config, engine, loader, is_main = run.config.train, run.engine, run.loader, run.process.is_main
    if is_main:
        log.info("training data: %s; %d process(es)", loader.info.describe(config.steps * run.samples_per_step),
                 run.process.world_size)
    loss, results = torch.tensor(float("nan"), device=engine.device), {}
    meter = _Throughput(run.samples_per_step)
    guard = NonFiniteGuard(run)
    if run.progress.samples_seen is None:  # a fresh run, or a checkpoint from before the count was kept
        run.progress.samples_seen = start * run.samples_per_step
    progress = tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                    disable=not (config.progress and is_main))
    with _metrics_log(run) as metrics, PreemptionWatch() as preemption:
        for step in range(start + 1, config.steps + 1):
            loss = engine.train_step([loader.next_batch() for _ in range(config.accum_steps)])
            meter.add_step()
            run.progress.samples_seen += run.samples_per_step
            progress.update(1)
            guard.check(step, loss, metrics)  # every rank decides alike: the engine's report is all-reduced
            if step % config.log_every == 0 or step == config.steps:
                skips, over_budget = loader.skip_report()  # collective: every rank, same step
                record = {"loss": global_mean(loss), "lr": engine.lr, "logit_scale": engine.logit_scale,
                          "samples_per_s": meter.rate(), "samples_seen": run.progress.samples_seen,
                          "train/skipped_steps": guard.skipped, **skips, **_pair_stats(engine)}
                metrics.write(step, **record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{record['samples_per_s']:.0f}")
                if over_budget is not None:
                    raise over_budget  # every rank at this same step, after the counts are on record
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                _save(run, step)
            if _eval_due(run, step):
                results = evaluate(run, step, metrics)
            if step < config.steps and preemption.requested():
                progress.close()
                _save(run, step)
                raise Preempted(step, preemption.signal_name or "a signal")
        progress.close()
        if run.checkpointer.last_saved != config.steps:  # not twice: the periodic save may have been the last step
            _save(run, config.steps)
        if run.config.eval.tasks:
            results = evaluate(run, config.steps, metrics)
            if is_main:
                write_results(results, None, run.run_dir / "results.json")
                print(format_table(results))
    return TrainResult(run_dir=run.run_dir, final_loss=global_mean(loss), results=results)


def _save(run: Run, step: int) -> None:
    """A checkpoint of `step`, never of weights that are not finite (every rank checks what it holds)."""
    if not all_true(run.engine.weights_finite()):
        raise TrainingError(f"step {step}: the model holds non-finite weights (NaN/inf); no checkpoint written "
                            f"(the run diverged: lower optim.lr)")
    run.checkpointer.save(step)


def _pair_stats(engine: Engine) -> dict[str, float]:
    """Each contrasted pair's loss and logit scale of the last step (models with several pairs), mean over ranks
    (a collective per value: every rank logs at the same steps, and the pairs are the same on every rank)."""
    return {f"pair/{key}": global_mean(value) for key, value in engine.objective.last_pair_stats.items()}


def _eval_due(run: Run, step: int) -> bool:
    """Periodic evaluation; the final one follows the loop."""
    every = run.config.eval.every_steps
    return bool(run.config.eval.tasks) and every > 0 and step % every == 0 and step < run.config.train.steps


def evaluate(run: Run, step: int, metrics: Union[MetricsLog, NoMetrics]) -> dict[str, float]:
    """Rank 0 evaluates the whole model. Under ZeRO-3 every rank runs the same evaluation (and only rank 0 keeps
    it): the sharded model's forward hooks hold collectives, so a forward on rank 0 alone would hang."""
    results: dict[str, float] = {}
    is_main = run.process.is_main
    with run.engine.full_model() as model:
        if is_main or run.engine.collective_forward:
            results = run_eval(model, run.model.eval_transform, run.model.tokenizer, run.config.eval,
                               device=run.engine.device, progress=run.config.train.progress and is_main,
                               audio=run.config.model.audio)
    barrier()
    results = results if is_main else {}
    metrics.write(step, **{f"eval/{k}": v for k, v in results.items()})
    return results


def _metrics_log(run: Run) -> Union[MetricsLog, NoMetrics]:
    if not run.process.is_main:
        return NoMetrics()  # ranks other than 0 write no metrics
    return MetricsLog(run.run_dir / "metrics.jsonl", run.config.logging, run.config.run_name,
                      config_to_dict(run.config))


class _Throughput:
    """Samples per second since the last reading."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.start, self.samples = time.perf_counter(), 0

    def add_step(self) -> None:
        self.samples += self.samples_per_step

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.samples / (now - self.start)
        self.start, self.samples = now, 0
        return rate
