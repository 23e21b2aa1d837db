"""Evaluate a trained run (its newest or a given checkpoint), a model named by a config, or an export in
mmpretrain's format (`evaluate_export`).

Takes the config sections it uses (model, eval) and plain settings, not the run config: eval/ sits below
`mmpretrain.config`, which composes every section, and does not import it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from mmpretrain.engine.checkpoint import load_checkpoint, model_state, resolve_resume
from mmpretrain.engine.local import resolve_device
from mmpretrain.errors import ConfigError
from mmpretrain.eval.harness import EvalConfig, run_eval, write_results
from mmpretrain.models import BuiltModel, ModelConfig, build_model

log = logging.getLogger(__name__)


def evaluate_model(model_config: ModelConfig, eval_config: EvalConfig, out: Path, run_dir: Optional[Path] = None,
                   checkpoint: Optional[str] = None, device: str = "auto", progress: bool = True,
                   record: Any = None, random_init: bool = False, overwrite: bool = False,
                   failures: Optional[dict[str, str]] = None, loss_name: str = "clip") -> dict[str, float]:
    """Run `eval_config` on the model of `checkpoint` (default: the newest of `run_dir`; neither given: the model
    as built) and write the flat results to `out`, with `record` beside them (the config that produced them, a
    dataclass or a dict; default: the two sections).

    Refused before any work: a model as built that is untrained (no `model.pretrained`) unless `random_init`, and
    an existing `out` unless `overwrite`. With `failures`, a failing task is recorded (see `run_eval`) and the
    other tasks' results are still written."""
    if not eval_config.tasks:
        raise ConfigError("eval.tasks is empty: nothing to evaluate")
    if checkpoint is None and run_dir is None and not model_config.pretrained and not random_init:
        raise ConfigError(f"no checkpoint and no model.pretrained: this would score the randomly initialised "
                          f"{model_config.name}; give a run directory or --checkpoint, set model.pretrained, or "
                          f"pass --random-init to mean it")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or --out to write elsewhere")
    built = build_model(model_config, loss_name)  # the loss kind decides which pair heads exist
    if checkpoint is not None or run_dir is not None:
        directory = run_dir / "checkpoints" if run_dir is not None else Path(".")
        path = resolve_resume(directory, checkpoint or "latest")
        if path is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        built.model.load_state_dict(model_state(load_checkpoint(path)))
        log.info("evaluating %s", path)
    else:
        log.info("evaluating %s as built (pretrained=%s)", model_config.name, model_config.pretrained)
    if record is None:
        record = {"model": asdict(model_config), "eval": asdict(eval_config)}
    return _score(built, model_config, eval_config, out, device, progress, record, failures)


def evaluate_export(export_dir: Path, eval_config: EvalConfig, out: Path, device: str = "auto",
                    progress: bool = True, overwrite: bool = False,
                    failures: Optional[dict[str, str]] = None) -> dict[str, float]:
    """`mmpretrain eval EXPORT_DIR`: `eval_config`'s tasks on the model of an export in mmpretrain's format
    (engine/export_mmpretrain.py), results written to `out` with the export's model section and source beside
    them. Refused before any work: no tasks, an existing `out` unless `overwrite`."""
    from mmpretrain.engine.export import typed_model_config
    from mmpretrain.engine.export_mmpretrain import load_export

    if not eval_config.tasks:
        raise ConfigError(f"no eval tasks for the export {export_dir}: give eval.tasks=[...] overrides or --config "
                          f"CONFIG with an eval section")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or --out to write elsewhere")
    loaded = load_export(export_dir)
    log.info("evaluating the export %s (from %s)", export_dir, loaded.config.get("source"))
    record = {"export": str(Path(export_dir).resolve()), "source": loaded.config.get("source"),
              "model": loaded.config["model"], "loss_name": loaded.config["loss_name"], "eval": asdict(eval_config)}
    return _score(loaded.built, typed_model_config(loaded.config["model"]), eval_config, out, device, progress,
                  record, failures)


def _score(built: BuiltModel, model_config: ModelConfig, eval_config: EvalConfig, out: Path, device: str,
           progress: bool, record: Any, failures: Optional[dict[str, str]]) -> dict[str, float]:
    """Run the tasks on a built (and loaded) model and write the results with `record` beside them."""
    resolved: torch.device = resolve_device(device)
    model = built.model.to(resolved)
    results = run_eval(model, built.eval_transform, built.tokenizer, eval_config, device=resolved, progress=progress,
                       failures=failures, audio=model_config.audio)
    write_results(results, record, out)
    return results


def evaluate_checkpoint(config: Any, run_dir: Optional[Path], checkpoint: Optional[str], out: Path,
                        random_init: bool = False, overwrite: bool = False,
                        failures: Optional[dict[str, str]] = None) -> dict[str, float]:
    """`mmpretrain eval`: `evaluate_model` with the sections of a run config (`model`, `eval`, `train.device`,
    `train.progress`), the whole config written beside the results. `config` is a RunConfig, typed loosely so
    that this module need not import the run config."""
    return evaluate_model(config.model, config.eval, out, run_dir, checkpoint, device=config.train.device,
                          progress=config.train.progress, record=config, random_init=random_init,
                          overwrite=overwrite, failures=failures, loss_name=config.loss.name)
