"""Evaluate a trained run (its newest or a given checkpoint) or a model named by a config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from mmpretrain.config import RunConfig, config_to_dict
from mmpretrain.engine.checkpoint import load_checkpoint, model_state, resolve_resume
from mmpretrain.engine.local import resolve_device
from mmpretrain.errors import ConfigError
from mmpretrain.eval.harness import run_eval, write_results
from mmpretrain.models import build_model

log = logging.getLogger(__name__)


def evaluate_checkpoint(config: RunConfig, run_dir: Optional[Path], checkpoint: Optional[str],
                        out: Path) -> dict[str, float]:
    """Run `config.eval` on the model of `checkpoint` (default: the run's newest) and write flat results."""
    if not config.eval.tasks:
        raise ConfigError("eval.tasks is empty: nothing to evaluate")
    built = build_model(config.model)
    if checkpoint is not None or run_dir is not None:
        directory = run_dir / "checkpoints" if run_dir is not None else Path(".")
        path = resolve_resume(directory, checkpoint or "latest")
        if path is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        built.model.load_state_dict(model_state(load_checkpoint(path)))
        log.info("evaluating %s", path)
    else:
        log.info("evaluating %s as built (pretrained=%s)", config.model.name, config.model.pretrained)
    device = resolve_device(config.train.device)
    model = built.model.to(device)
    results = run_eval(model, built.eval_transform, built.tokenizer, config.eval, device=device,
                       progress=config.train.progress)
    write_results(results, config_to_dict(config), out)
    return results
