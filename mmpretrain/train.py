"""The training loop: build everything from the config, then step -> log -> checkpoint -> evaluate."""

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
from tqdm import tqdm

from mmpretrain.config import RunConfig, config_to_dict, save_config
from mmpretrain.data.pipeline import build_train_loader
from mmpretrain.engine.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from mmpretrain.engine.local import LocalEngine, resolve_device
from mmpretrain.engine.metrics import MetricsLog
from mmpretrain.engine.schedule import build_optimizer, build_scheduler
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


def prepare_run_dir(config: RunConfig, resume: Optional[str], overwrite: bool) -> Path:
    """Create the run directory; refuse to silently mix a new run into an old one."""
    run_dir = config.run_dir
    if overwrite and resume is None and run_dir.exists():
        shutil.rmtree(run_dir)
    if resume is None and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume latest to continue it, "
                              "--overwrite to replace it, or choose another run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    return run_dir


def evaluate(config: RunConfig, built: BuiltModel, device: torch.device, step: int,
             metrics: MetricsLog) -> dict[str, float]:
    results = run_eval(built.model, built.eval_transform, built.tokenizer, config.eval, device=str(device),
                       progress=config.train.progress)
    metrics.write(step, **{f"eval/{k}": v for k, v in results.items()})
    return results


def _restore(engine: LocalEngine, run_dir: Path, resume: Optional[str]) -> int:
    """Load the checkpoint named by `resume` (if any) into the engine; return the step to continue from."""
    checkpoint = resolve_resume(run_dir / "checkpoints", resume) if resume else None
    if checkpoint is None:
        return 0
    state = load_checkpoint(checkpoint)
    engine.load_state_dict(state)
    log.warning("resumed from %s at step %d; the data stream restarts from its first epoch", checkpoint,
                state["step"])
    return int(state["step"])


def _save(engine: LocalEngine, config: RunConfig, step: int) -> None:
    state = {**engine.state_dict(), "step": step, "config": config_to_dict(config)}
    save_checkpoint(config.run_dir / "checkpoints", step, state, config.train.keep_checkpoints)


def train(config: RunConfig, resume: Optional[str] = None, overwrite: bool = False) -> TrainResult:
    """Train `config` to `train.steps`, evaluating every `eval.every_steps` and at the end."""
    check_task_data(config.eval)
    run_dir = prepare_run_dir(config, resume, overwrite)
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    built = build_model(config.model)
    loader, stream_info = build_train_loader(config.data, built.train_transform, built.tokenizer,
                                             seed=config.train.seed)
    log.info("training data: %s", stream_info.describe())
    optimizer = build_optimizer(built.model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.train.steps)
    engine = LocalEngine(built.model, optimizer, scheduler, device, config.train.precision, config.optim.grad_clip)
    loss_fn = build_loss(config.loss)
    start_step = _restore(engine, run_dir, resume)

    results: dict[str, float] = {}
    loss = torch.tensor(float("nan"))
    progress = tqdm(total=config.train.steps, initial=start_step, desc="train", unit="step",
                    disable=not config.train.progress, dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    data = iter(loader)
    with MetricsLog(run_dir / "metrics.jsonl") as metrics:
        for step in range(start_step + 1, config.train.steps + 1):
            batch = next(data)
            loss = engine.train_step(batch, loss_fn)
            window_samples += batch["image"].shape[0]
            progress.update(1)
            if step % config.train.log_every == 0 or step == config.train.steps:
                samples_per_s = window_samples / (time.perf_counter() - window_start)
                record = {"loss": loss.item(),  # .item() is a device sync point: only on log steps
                          "lr": engine.lr, "logit_scale": engine.model.logit_scale.exp().item(),
                          "samples_per_s": samples_per_s, "samples_seen": step * config.data.batch_size}
                metrics.write(step, **record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{samples_per_s:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            if config.train.checkpoint_every and step % config.train.checkpoint_every == 0:
                _save(engine, config, step)
            if (config.eval.tasks and config.eval.every_steps and step % config.eval.every_steps == 0
                    and step < config.train.steps):  # the final evaluation follows the loop
                results = evaluate(config, built, device, step, metrics)
        progress.close()

        _save(engine, config, config.train.steps)
        if config.eval.tasks:
            results = evaluate(config, built, device, config.train.steps, metrics)
            write_results(results, None, run_dir / "results.json")
            print(format_table(results))
    return TrainResult(run_dir=run_dir, final_loss=float(loss.item()), results=results)
