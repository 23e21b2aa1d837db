"""Run metrics: JSON lines always (one object per log step, appended and flushed so a crash loses nothing; strict
JSON: a value that is not finite is written as the string "nan", "inf" or "-inf");
TensorBoard and wandb (offline by default: clusters often have no network) when configured. Rank 0 only."""

from __future__ import annotations

import importlib
import json
import math
import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from mmpretrain.errors import ConfigError


@dataclass
class LoggingConfig:
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = False                  # event files in <run_dir>/tensorboard
    wandb: bool = False                        # a wandb run in <run_dir>/wandb
    wandb_project: str = "mmpretrain"
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: `wandb sync <run_dir>/wandb/offline-run-*`

    def validate(self) -> None:
        # Whether the tensorboard / wandb packages are installed is checked when the log opens (MetricsLog).
        if self.wandb and not self.wandb_project.strip():
            raise ConfigError("logging.wandb_project is empty: wandb needs a project name")


def _import_or_explain(extra: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"logging.{extra}=true needs the {extra} package: pip install "
                          f"'mmpretrain-contrastive[{extra}]' ({e})") from None


def json_safe(value: Any) -> Any:
    """`value` as strict JSON can hold it: a float that is not finite becomes the string "nan", "inf" or "-inf"
    (`float()` reads them back), so metrics.jsonl never holds the bare NaN / Infinity that strict parsers refuse."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class MetricsLog:
    def __init__(self, path: Path, config: Optional[LoggingConfig] = None, run_name: str = "run",
                 run_config: Optional[dict[str, Any]] = None) -> None:
        config = config or LoggingConfig()
        config.validate()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Every missing package is reported before anything is created, so a failure leaves nothing open.
        summary_writer = _import_or_explain("tensorboard", "torch.utils.tensorboard") if config.tensorboard else None
        wandb = _import_or_explain("wandb", "wandb") if config.wandb else None
        self._tensorboard = (summary_writer.SummaryWriter(log_dir=str(path.parent / "tensorboard"))
                             if summary_writer else None)
        self._wandb = (wandb.init(project=config.wandb_project, name=run_name, dir=str(path.parent),
                                  mode=config.wandb_mode, config=run_config or {}) if wandb else None)
        self._file = path.open("a", encoding="utf-8")

    def write(self, step: int, **values: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: json_safe(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in values.items() if isinstance(v, numbers.Real)}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoMetrics:
    """What ranks other than 0 log to: nothing."""

    def write(self, step: int, **values: Any) -> None:
        pass

    def __enter__(self) -> "NoMetrics":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
