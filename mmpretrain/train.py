"""The training loop: build everything from the config, then step -> log -> checkpoint -> evaluate.

The same loop runs as one process and as N (torchrun / srun): rank-specific work is explicit (rank 0 writes the
run directory, logs, evaluates), everything else is identical on every rank.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mmpretrain.config import RunConfig, config_to_dict, save_config
from mmpretrain.data.augment import build_train_transform
from mmpretrain.data.pipeline import build_train_loader
from mmpretrain.engine.dist import (ProcessInfo, barrier, detect_process, init_distributed, multi_process,
                                   shutdown)
from mmpretrain.engine.factory import build_engine, build_optimizer
from mmpretrain.engine.local import resolve_device
from mmpretrain.engine.metrics import MetricsLog
from mmpretrain.engine.objective import ContrastiveObjective
from mmpretrain.engine.preemption import Preempted, PreemptionWatch
from mmpretrain.engine.schedule import build_scheduler
from mmpretrain.engine.stream import TrainStream
from mmpretrain.eval.harness import check_task_data, format_table, run_eval, write_results
from mmpretrain.losses import build_loss
from mmpretrain.models import BuiltModel, build_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    final_loss: float
    results: dict[str, float]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(config: RunConfig, resume: Optional[str], overwrite: bool, process: ProcessInfo) -> Path:
    """Create the run directory (rank 0); refuse to silently mix a new run into an old one (every rank)."""
    run_dir = config.run_dir
    if not overwrite and resume is None and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume latest to continue it, "
                              "--overwrite to replace it, or choose another run_name")
    barrier()  # every rank has checked before rank 0 changes anything
    if process.is_main:
        if overwrite and resume is None and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    barrier()
    return run_dir


def evaluate(config: RunConfig, built: BuiltModel, engine, process: ProcessInfo, step: int,
             metrics: Optional[MetricsLog]) -> dict[str, float]:
    """Rank 0 evaluates the whole model. Under ZeRO-3 every rank runs the same evaluation (and only rank 0 keeps
    it): the sharded model's forward hooks hold collectives, so a forward on rank 0 alone would hang."""
    results: dict[str, float] = {}
    with engine.full_model() as model:
        if process.is_main or engine.collective_forward:
            results = run_eval(model, built.eval_transform, built.tokenizer, config.eval, device=engine.device,
                               progress=config.train.progress and process.is_main)
    barrier()
    results = results if process.is_main else {}
    if metrics is not None:
        metrics.write(step, **{f"eval/{k}": v for k, v in results.items()})
    return results


def _global_mean(value: torch.Tensor) -> float:
    """The mean of a per-rank value over ranks (the global-batch loss). A sync point: only on log steps."""
    if multi_process():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value.item())


def train(config: RunConfig, resume: Optional[str] = None, overwrite: bool = False) -> TrainResult:
    """Train `config` to `train.steps`, evaluating every `eval.every_steps` and at the end."""
    process = detect_process()
    init_distributed(process, require_group=config.engine.name == "deepspeed")
    try:
        return _train(config, process, resume, overwrite)
    finally:
        shutdown()


def _train(config: RunConfig, process: ProcessInfo, resume: Optional[str], overwrite: bool) -> TrainResult:
    check_task_data(config.eval)
    run_dir = prepare_run_dir(config, resume, overwrite, process)
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device, process.local_rank)
    built = build_model(config.model)
    train_transform = build_train_transform(built.preprocess, config.data.augment)
    loader, stream_info = build_train_loader(config.data, train_transform, built.tokenizer, seed=config.train.seed,
                                             rank=process.rank, world_size=process.world_size)
    samples_per_step = config.data.batch_size * config.train.accum_steps * process.world_size
    if process.is_main:
        log.info("training data: %s; %d process(es)", stream_info.describe(config.train.steps * samples_per_step),
                 process.world_size)
    optimizer = build_optimizer(built.model, config.optim, config.engine, device)
    scheduler = build_scheduler(optimizer, config.optim, config.train.steps)
    objective = ContrastiveObjective(built.model, build_loss(config.loss), train_transform.device_normalizer())
    engine = build_engine(config.engine, objective, optimizer, scheduler, device, config.train.precision,
                          config.optim.grad_clip, config.data.batch_size, process.world_size, config.train.accum_steps)
    restored = engine.restore(run_dir / "checkpoints", resume) if resume else None
    start_step = restored[1] if restored else 0
    stream = TrainStream(loader, config.data, process.rank, process.world_size, restored[2] if restored else None)
    if restored and process.is_main:
        log.info("resumed from %s at step %d, data stream at the next unread sample", restored[0], start_step)
    extra = {"config": config_to_dict(config)}

    results: dict[str, float] = {}
    loss = torch.tensor(float("nan"), device=engine.device)
    progress = tqdm(total=config.train.steps, initial=start_step, desc="train", unit="step",
                    disable=not (config.train.progress and process.is_main), dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    metrics_log = (MetricsLog(run_dir / "metrics.jsonl", config.logging, config.run_name, extra["config"])
                   if process.is_main else _NoLog())
    with metrics_log as metrics, \
            PreemptionWatch() as preemption:
        for step in range(start_step + 1, config.train.steps + 1):
            loss = engine.train_step([stream.next_batch() for _ in range(config.train.accum_steps)])
            window_samples += samples_per_step
            progress.update(1)
            if step % config.train.log_every == 0 or step == config.train.steps:
                samples_per_s = window_samples / (time.perf_counter() - window_start)
                record = {"loss": _global_mean(loss), "lr": engine.lr,
                          "logit_scale": engine.logit_scale, "samples_per_s": samples_per_s,
                          "samples_seen": step * samples_per_step, **stream.check_and_report()}
                metrics.write(step, **record)
                stream.stop_if_over_budget()  # every rank at this same step, after the counts are on record
                progress.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{samples_per_s:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            if config.train.checkpoint_every and step % config.train.checkpoint_every == 0:
                engine.save(run_dir / "checkpoints", step, {**extra, "data": stream.state_for_checkpoint()},
                            config.train.keep_checkpoints)
            if (config.eval.tasks and config.eval.every_steps and step % config.eval.every_steps == 0
                    and step < config.train.steps):  # the final evaluation follows the loop
                results = evaluate(config, built, engine, process, step, metrics)
            if preemption.requested() and step < config.train.steps:
                progress.close()
                engine.save(run_dir / "checkpoints", step, {**extra, "data": stream.state_for_checkpoint()},
                            config.train.keep_checkpoints)
                raise Preempted(step, preemption.signal_name or "a signal")
        progress.close()

        engine.save(run_dir / "checkpoints", config.train.steps, {**extra, "data": stream.state_for_checkpoint()},
                    config.train.keep_checkpoints)
        if config.eval.tasks:
            results = evaluate(config, built, engine, process, config.train.steps, metrics)
            if process.is_main:
                write_results(results, None, run_dir / "results.json")
                print(format_table(results))
    return TrainResult(run_dir=run_dir, final_loss=_global_mean(loss), results=results)


class _NoLog:
    """Ranks other than 0 write no metrics."""

    def write(self, step: int, **values: object) -> None:
        pass

    def __enter__(self) -> "_NoLog":
        return self

    def __exit__(self, *exc: object) -> None:
        pass
