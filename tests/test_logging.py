"""Metrics reach TensorBoard and (offline) wandb when configured, with the same values as metrics.jsonl."""

import pytest

from mmpretrain.config import load_config
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.train import train
from tests.conftest import micro_overrides


def test_tensorboard_and_offline_wandb_receive_the_metrics(colour_shards, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=4) + [
        "eval.tasks=[]", "logging.tensorboard=true", "logging.wandb=true"]
    run_dir = train(load_config("configs/demo.yaml", overrides)).run_dir
    jsonl = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged.keys() == jsonl.keys() == {2, 4}
    assert all(logged[s] == pytest.approx(jsonl[s], rel=1e-6) for s in logged)

    offline_runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1 and offline_runs[0].stat().st_size > 0  # `wandb sync` uploads it later


def test_logging_to_a_missing_package_is_a_config_error(colour_shards, tmp_path, monkeypatch):
    import importlib

    real_import = importlib.import_module

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_wandb)
    from mmpretrain.engine.metrics import LoggingConfig, MetricsLog
    from mmpretrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pip install 'mmpretrain-contrastive\[wandb\]'"):
        MetricsLog(tmp_path / "metrics.jsonl", LoggingConfig(tensorboard=True, wandb=True))
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "metrics.jsonl").exists()
