"""The composition root: a run config and this process's place in the job -> every part of a training run.

Nothing else builds parts for training, and the parts do not build each other: the loader gets the collectives
it needs, the engine gets the objective, the Checkpointer gets the parts to save. A new stateful part (an EMA,
a data-selection state) is built here and registered with the Checkpointer; the training loop does not change.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mmpretrain.config import RunConfig, config_to_dict
from mmpretrain.data.augment import build_train_transform
from mmpretrain.data.factory import TrainBatches, build_train_loader
from mmpretrain.data.stages import StageEnv
from mmpretrain.engine.base import Engine
from mmpretrain.engine.checkpoint import Checkpointer
from mmpretrain.engine.dist import ProcessInfo, all_gather, all_sum, barrier, broadcast
from mmpretrain.engine.factory import StepSettings, build_engine, build_optimizer
from mmpretrain.engine.local import resolve_device
from mmpretrain.engine.runlock import LOCK_NAME, RunLock
from mmpretrain.engine.rng import RngState
from mmpretrain.engine.objective import ContrastiveObjective, build_pair_losses
from mmpretrain.engine.schedule import build_scheduler
from mmpretrain.errors import ConfigError
from mmpretrain.eval.harness import check_task_data
from mmpretrain.models import BuiltModel, build_model
from mmpretrain.resume import check_resume, record_config

log = logging.getLogger(__name__)


class TrainProgress:
    """What the run has consumed so far, counted rather than derived from the step: after an elastic resume onto
    another number of ranks, `step * samples_per_step` would count the old steps at the new batch size."""

    def __init__(self) -> None:
        self.samples_seen: Optional[int] = None  # None: not restored (a fresh run, or a checkpoint that predates it)

    def state_dict(self) -> dict[str, int]:
        return {"samples_seen": int(self.samples_seen or 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.samples_seen = int(state["samples_seen"])


@dataclass
class Run:
    """Everything a training loop touches."""

    config: RunConfig
    process: ProcessInfo
    run_dir: Path
    model: BuiltModel
    loader: TrainBatches  # the shard stream or the synthetic batch (data/factory.py)
    engine: Engine
    checkpointer: Checkpointer
    lock: Optional[RunLock] = None  # rank 0's lock of run_dir: `lock.release()` when the run ends (also at exit)
    progress: TrainProgress = field(default_factory=TrainProgress)

    @property
    def samples_per_step(self) -> int:
        return self.config.data.batch_size * self.config.train.accum_steps * self.process.world_size


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(config: RunConfig, resume: Optional[str], overwrite: bool, process: ProcessInfo,
                    allow_changes: Sequence[str] = ()) -> tuple[Path, Optional[RunLock]]:
    """Lock the run directory (rank 0, before anything in it changes; every rank learns the outcome), refuse to
    silently mix a new run into an old one, or to resume with a config that breaks exactness (every rank, before
    anything is written; mmpretrain/resume.py), then create it (rank 0). The lock is rank 0's."""
    run_dir = config.run_dir
    lock, refused = None, None
    if process.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except ConfigError as e:
            refused = str(e)
    refused = broadcast(refused)
    if refused:
        raise ConfigError(refused)
    try:
        if not overwrite and resume is None and (run_dir / "checkpoints").exists():
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume latest to continue it, "
                                  "--overwrite to replace it, or choose another run_name")
        check = check_resume(config, resume, allow_changes)
        barrier()  # every rank has checked before rank 0 changes anything
        if process.is_main:
            if overwrite and resume is None and run_dir.exists():
                for entry in run_dir.iterdir():
                    if entry.name != LOCK_NAME:  # the lock stays: this job holds it
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            run_dir.mkdir(parents=True, exist_ok=True)
            record_config(config, run_dir, check)
        barrier()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run_dir, lock


def build_run(config: RunConfig, process: ProcessInfo, resume: Optional[str] = None,
              overwrite: bool = False, allow_changes: Sequence[str] = ()) -> Run:
    """Build every part in dependency order and register the stateful ones (not yet restored)."""
    check_task_data(config.eval, config.model.towers)  # before any step: a task on a tower the model lacks
    run_dir, lock = prepare_run_dir(config, resume, overwrite, process, allow_changes)
    try:
        return _build_parts(config, process, run_dir, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build_parts(config: RunConfig, process: ProcessInfo, run_dir: Path, lock: Optional[RunLock]) -> Run:
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device, process.local_rank)
    built = build_model(config.model, config.loss.name)
    train_transform = build_train_transform(built.preprocess, config.data.augment)
    env = StageEnv(config.data, train_transform, built.tokenizer, tuple(config.model.towers),
                   config.model.audio if "audio" in config.model.towers else None)
    loader = build_train_loader(config.data, env, config.train.seed, process.rank, process.world_size, device,
                                all_sum=all_sum, all_gather=all_gather)
    optimizer = build_optimizer(built.model, config.optim, config.engine, device)
    scheduler = build_scheduler(optimizer, config.optim, config.train.steps)
    config.loss.validate()
    losses = build_pair_losses(built.model.pairs, config.loss.chunk_size, config.loss.impl)
    objective = ContrastiveObjective(built.model, losses, train_transform.device_normalizer())
    step = StepSettings(device, config.train.precision, config.optim.grad_clip, config.data.batch_size,
                        config.train.accum_steps, process.world_size)
    engine = build_engine(config.engine, objective, optimizer, scheduler, step)
    checkpointer = Checkpointer(run_dir / "checkpoints", config.train.keep_checkpoints, process.is_main,
                                gather=all_gather, barrier=barrier, broadcast=broadcast,
                                metadata={"config": config_to_dict(config)})
    checkpointer.register("engine", engine, sharded=True)
    checkpointer.register("data", loader, per_rank=True)
    progress = TrainProgress()
    checkpointer.register("progress", progress, optional=True)
    checkpointer.register("rng", RngState(device, process.rank, process.world_size), per_rank=True, optional=True)
    return Run(config, process, run_dir, built, loader, engine, checkpointer, lock, progress)
