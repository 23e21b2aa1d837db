"""The run config: typed dataclasses (each defined beside the component it configures, with a `validate()` for
its own values), loaded from YAML and overridden with `key.sub=value` arguments. Strict: an unknown key, a wrong
type or a value out of range is a one-line ConfigError naming the key and where it came from, raised before any
work starts. Only the rules that span sections live here (RunConfig.validate)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpretrain.data.config import DataConfig
from mmpretrain.engine.config import EngineConfig
from mmpretrain.engine.factory import optimizer_impl
from mmpretrain.engine.metrics import LoggingConfig
from mmpretrain.engine.schedule import OptimConfig
from mmpretrain.errors import ConfigError, require
from mmpretrain.eval.harness import EvalConfig
from mmpretrain.losses.modules import LossConfig
from mmpretrain.models.towers import ModelConfig


@dataclass
class TrainConfig:
    """The training loop: how long, on what, and how often to log, checkpoint and evaluate."""

    steps: int = 1000
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16: autocast (local) / DeepSpeed bf16;
    #                                                  fp16: DeepSpeed on CUDA only, with dynamic loss scaling
    accum_steps: int = 1                          # micro-batches per step, contrasted as ONE batch (GradCache)
    log_every: int = 10
    checkpoint_every: int = 0                     # 0 = only at the end
    keep_checkpoints: int = 2                     # the newest this many are kept
    progress: bool = True
    malloc: Literal["tuned", "system"] = "tuned"  # tuned: glibc keeps freed step temporaries for reuse instead of
    #                                               returning them to the OS each step (engine/allocator.py; the
    #                                               measured effect: docs/BENCHMARKS.md, "Training throughput")

    def validate(self) -> None:
        require(self.malloc in ("tuned", "system"), "train.malloc", self.malloc, "'tuned' or 'system'")
        require(self.steps > 0, "train.steps", self.steps, "> 0")
        require(self.accum_steps >= 1, "train.accum_steps", self.accum_steps, ">= 1")
        require(self.log_every > 0, "train.log_every", self.log_every, "> 0")
        require(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every,
                ">= 0 (0: only at the end)")
        require(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, ">= 1")


@dataclass
class RunConfig:
    run_name: str = "run"
    output_dir: str = "runs"          # the run directory is output_dir/run_name
    data_root: str = "data"           # referenced in paths as ${data_root}
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def validate(self) -> None:
        """Each section's own rules (its `validate()`, beside its fields), then the rules that span sections."""
        # One directory under output_dir: `train --overwrite` deletes the run directory, so "", "." or ".."
        # would delete output_dir or its parent.
        require(self.run_name not in ("", ".", "..") and not any(sep in self.run_name for sep in "/\\"),
                "run_name", self.run_name, "a directory name under output_dir, without / or \\")
        for section in fields(self):
            value = getattr(self, section.name)
            if is_dataclass(value):
                value.validate()
        # The data section can batch single samples (tests and tools do); a contrastive loss needs negatives.
        require(self.data.batch_size > 1, "data.batch_size", self.data.batch_size,
                "> 1: a contrastive batch needs negatives")
        missing = [m for m in self.data.optional if m not in self.model.towers]
        if missing:
            raise ConfigError(f"data.optional names {missing}, which model.towers {list(self.model.towers)} lacks")
        pairs = self.model.resolved_pairs(self.loss.name)
        image_text = next((p for p in pairs if p.key == "image_text"), None)
        if image_text is not None and image_text.loss == "siglip" and self.model.init_logit_bias is None:
            raise ConfigError("the image-text pair's sigmoid loss (loss.name=siglip) needs the learnable bias: set "
                              "model.init_logit_bias (SigLIP uses -10, with model.init_logit_scale=2.3, i.e. log 10)")
        optimizer_impl(self.optim, self.engine)  # optim.impl against engine.offload_optimizer


def _one_line(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    message = str(getattr(error, "msg", None) or error).splitlines()[0]
    return f"{key}: {message}" if key else message


def _merge(base, update, source: str):
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_one_line(e)}") from None


def _update(config, override: str):
    key, value = override.split("=", 1)
    try:
        parsed = OmegaConf.from_dotlist([f"value={value}"])["value"]  # the same value grammar as other overrides
        OmegaConf.update(config, key, parsed, merge=True)
        return config
    except (OmegaConfBaseException, IndexError, KeyError) as e:
        message = _one_line(e) if isinstance(e, OmegaConfBaseException) else f"{key}: no such item ({e})"
        raise ConfigError(f"override {override!r}: {message}") from None


def _load_yaml(path: Path):
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return OmegaConf.create({})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return OmegaConf.create(data)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults <- YAML file <- `key.sub=value` overrides, validated against RunConfig."""
    merged = OmegaConf.structured(RunConfig)
    if path is not None:
        merged = _merge(merged, _load_yaml(Path(path)), str(path))
    for override in overrides:
        if "=" not in override or override.startswith("="):
            raise ConfigError(f"override {override!r}: expected key.sub=value")
        if "[" in override.split("=", 1)[0]:  # data.sources[1].weight=0.5: an item of a list, set in place
            merged = _update(merged, override)
        else:
            try:
                parsed = OmegaConf.from_dotlist([override])
            except yaml.YAMLError as e:  # the value is YAML: say where it breaks, in one line
                mark = getattr(e, "problem_mark", None)
                where = f" at column {mark.column + 1}" if mark is not None else ""
                problem = getattr(e, "problem", None) or type(e).__name__
                raise ConfigError(f"override {override!r}: not valid YAML{where} ({problem}; quote values "
                                  "holding ':', '{' or '${...}')") from None
            merged = _merge(merged, parsed, f"override {override!r}")
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path or 'config'}: {_one_line(e)}") from None
    try:
        config.validate()
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}{' + overrides' if overrides else ''}: {e}") from None
    return config


def config_to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_to_dict(config: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config, so a run directory says exactly what produced it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(config), encoding="utf-8")
