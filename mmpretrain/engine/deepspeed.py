"""The DeepSpeed engine: ZeRO stage 0-3, fp32 or bf16, gradient clipping, optional optimizer offload.

The only module that imports deepspeed. It has the LocalEngine's methods, so the training loop is the same for
one process and for N. Checkpoints are DeepSpeed's own (sharded optimizer state, exact resume) in
`checkpoints/step-XXXXXXXXX/`, plus a consolidated `checkpoints/step-XXXXXXXXX.pt` with the full model for
evaluation and export, written by rank 0 (engine/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from mmpretrain.engine.base import EngineBase, StepReport
from mmpretrain.engine.objective import ContrastiveObjective
from mmpretrain.errors import ConfigError
from mmpretrain.engine.schedule import WarmupCosineLR, apply_schedule
from mmpretrain.paths import configs_dir

log = logging.getLogger(__name__)

def load_deepspeed_config(name_or_path: str) -> dict[str, Any]:
    """A DeepSpeed JSON by path or by name under configs/deepspeed/ (`zero2`)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = configs_dir() / "deepspeed" / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"engine.deepspeed_config: {name_or_path!r} is neither a file nor a name under "
                          f"{configs_dir() / 'deepspeed'}")
    config = json.loads(path.read_text())
    config.pop("_comment", None)
    return config


def build_deepspeed_config(base: Mapping[str, Any], batch_size: int, precision: str,
                           grad_clip: Optional[float], offload_optimizer: bool, accum_steps: int = 1
                           ) -> dict[str, Any]:
    """The run config decides batch, precision and clipping; the JSON decides ZeRO. One source for each."""
    stage = int(base.get("zero_optimization", {}).get("stage", 0))
    if accum_steps > 1 and stage == 3:
        # Measured on 2 CPU ranks, micro model, 2 micro-batches of 2 against batches of 4 (docs/BENCHMARKS.md):
        # the first cause is fixed (a step's first backward reached only the logit scale, and ZeRO-3, which copies
        # the first backward's gradients and adds the later ones, kept the towers' gradients of the step before:
        # loss 2.28 -> 2.27 in 4 steps instead of -> 1.34). What remains is a loss 2e-4 off the reference after
        # one step, where ZeRO-0/2 + GradCache match it to 1e-7; until that is explained, refuse.
        raise ConfigError("train.accum_steps > 1 is not supported under ZeRO-3 yet (after one step its loss is "
                          "2e-4 off the unaccumulated batch's, unexplained); use zero0/zero1/zero2, or "
                          "accum_steps=1")
    config = {k: v for k, v in base.items() if k not in ("train_batch_size", "fp16", "bf16")}
    config.update({
        "train_micro_batch_size_per_gpu": batch_size,
        # GradCache: k micro-batches take k backward passes, one per micro-batch (engine/base.py).
        "gradient_accumulation_steps": accum_steps,
        "gradient_clipping": grad_clip or 0.0,
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**12,  # we log ourselves
    })
    if precision == "fp16":
        # Dynamic loss scaling (loss_scale 0); auto_cast casts the float inputs (images) to half. Only present
        # when asked for: DeepSpeed 0.19 casts the model to half when it sees this section at all.
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "auto_cast": True}
    if offload_optimizer:
        zero = dict(config.get("zero_optimization", {}))
        if zero.get("stage", 0) == 0:
            raise ConfigError("engine.offload_optimizer needs ZeRO stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        config["zero_optimization"] = zero
    return config


def deepspeed_adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float, on_cpu: bool
                    ) -> torch.optim.Optimizer:
    """DeepSpeed's AdamW: the vectorised CPU kernel when the state is in CPU memory, else the fused CUDA one.

    Both compile a small C++/CUDA op on first use (cached under TORCH_EXTENSIONS_DIR)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

    if on_cpu:
        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)


class DeepSpeedEngine(EngineBase):
    """DeepSpeed's engine under the shared step algorithm (engine/base.py).

    With k > 1 micro-batches DeepSpeed sees k backward passes per step (one per micro-batch, each sending its slice
    of the whole batch's loss gradient), so its gradient_accumulation_steps is k and nothing is rescaled: the
    passes add up to exactly the whole batch's gradient. Each backward is followed by `engine.step()`, which only accumulates until
    the last pass of the step, the boundary, where it reduces, clips and steps the optimizer and the schedule.
    """

    def __init__(self, objective: ContrastiveObjective, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, ds_config: dict[str, Any]) -> None:
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=objective, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.objective = objective
        self.model = objective.model
        self.device = self.engine.device
        self.stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        # ZeRO-3's module hooks may all-gather in any forward, so every rank must run every forward together.
        self.collective_forward = self.stage == 3

    def _forward(self, batch: Any, **kwargs: Any) -> Any:
        return self.engine(batch, **kwargs)

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def _finish_step(self) -> StepReport:
        """Done by the boundary `engine.step()` of the last backward; the gradient norm DeepSpeed computed there
        (the global one, the same on every rank; None where it reports none) is read afterwards, so a norm that is
        not finite is reported as applied (the loop stops the run). An fp16 overflow that the loss scaler skipped
        is DeepSpeed's own business, not a divergence."""
        if not self.engine.was_step_applied():
            return StepReport(applied=False)
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return StepReport()
        norm = float(norm)
        return StepReport(finite=math.isfinite(norm), grad_norm=norm)

    def _skip_step(self) -> None:
        """No backward was run (DeepSpeed saw the forward only); the schedule advances as in an applied step."""
        self.scheduler.step()

    def weights_finite(self) -> bool:
        """This rank's parameters: under ZeRO-3 its partitions (`ds_tensor`), else the whole model."""
        tensors = [getattr(p, "ds_tensor", p) if self.stage == 3 else p for p in self.objective.parameters()]
        return all(bool(torch.isfinite(t.detach()).all()) for t in tensors if t.numel())

    def _loss_from_features(self, features: Any) -> torch.Tensor:
        # The objective itself, not DeepSpeed's engine: the engine's forward hooks would take the gradient that
        # autograd.grad computes here for a backward pass of its own. Only the head parameters (logit scale and
        # bias) are used; under ZeRO-3 they are gathered for it.
        head = self.objective.head_parameters()
        gather = (deepspeed.zero.GatheredParameters(head, modifier_rank=None) if self.stage == 3
                  else contextlib.nullcontext())
        with gather:
            return self.objective(features, mode="loss_from_features")

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module]:
        """The whole model on every rank, for evaluation and export. Under ZeRO-3 every rank must enter: the
        partitioned parameters are gathered (a collective) and released on exit."""
        if self.stage < 3:
            yield self.model
            return
        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            yield self.model

    def state_dict(self) -> dict[str, Any]:
        """The full model for the consolidated checkpoint (evaluation, export). A collective under ZeRO-3."""
        with self.full_model() as model:
            return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing: the model, optimizer and schedule come back from the shards (`load_shards`)."""

    def save_shards(self, folder: Path) -> None:
        """DeepSpeed's own checkpoint (every rank writes its partition of the optimizer state)."""
        self.engine.save_checkpoint(str(folder.parent), tag=folder.name, client_state={})

    def load_shards(self, folder: Path) -> None:
        """DeepSpeed's checkpoint in `folder`. Written by another number of ranks under ZeRO >= 1 (an elastic
        resume), its optimizer partitions no longer fit: it is converted once to DeepSpeed's universal format
        (`folder/universal`, by rank 0) and loaded from there, repartitioned for this world size."""
        if not folder.is_dir():
            raise FileNotFoundError(f"DeepSpeed checkpoint directory {folder} not found")
        # bf16 runs name them bf16_zero_pp_rank_*; ZeRO-0 writes none (its state is whole in every rank's file)
        saved_ranks = len(list(folder.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))
        universal = self.stage > 0 and saved_ranks not in (0, dist.get_world_size())
        if universal:
            folder = _universal_checkpoint(folder)
        self.engine._config.load_universal_checkpoint = universal  # read by load_checkpoint, nowhere else
        try:
            path, _ = self.engine.load_checkpoint(str(folder.parent), tag=folder.name)
        finally:
            self.engine._config.load_universal_checkpoint = False
        if path is None:
            raise FileNotFoundError(f"could not load DeepSpeed checkpoint {folder}")
        if isinstance(self.scheduler, WarmupCosineLR):
            apply_schedule(self.scheduler)  # the ZeRO optimizer's restored param groups carry the saved lrs


def _universal_checkpoint(folder: Path) -> Path:
    """`folder` converted to DeepSpeed's universal checkpoint: rank 0 converts into a temp folder renamed into
    place on success (a half-done conversion is never taken for a done one); every rank learns the outcome."""
    target = folder / "universal"
    error = ""
    if dist.get_rank() == 0 and not target.is_dir():
        log.warning("%s was written by another number of ranks: converting it to DeepSpeed's universal format "
                    "in %s to repartition the optimizer state", folder, target)
        tmp = folder / "universal.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(folder), "--output_folder", str(tmp), "--inject_missing_state",
                               "--num_extract_workers", "1", "--num_merge_workers", "1"],
                              capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            error = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:]) or f"exit {done.returncode}"
    outcome = [error]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0]:
        raise ConfigError(f"{folder} was written by another number of ranks and could not be converted to "
                          f"DeepSpeed's universal format: {outcome[0]}")
    return target
