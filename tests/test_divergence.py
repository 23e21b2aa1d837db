"""A run whose loss or gradient norm stops being finite: stopped before a checkpoint of it, or its steps skipped."""

import json
import math

import pytest
import torch

from mmpretrain.cli import main
from mmpretrain.config import load_config
from mmpretrain.engine.local import LocalEngine
from mmpretrain.engine.metrics import MetricsLog
from mmpretrain.engine.schedule import OptimConfig
from mmpretrain.errors import ConfigError
from mmpretrain.train import train
from tests.conftest import micro_overrides


def strict_records(path):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def finite_checkpoint(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["engine"]["model"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_diverging_run_stops_with_exit_3_before_a_nan_checkpoint(colour_shards, tmp_path, capsys):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=6) + [
        "eval.tasks=[]", "optim.lr=1e6", "train.checkpoint_every=1", "train.log_every=1"]
    assert main(["train", "demo", *overrides]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 2: loss nan is not finite" in err[0], err
    run_dir = tmp_path / "runs" / "micro"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert checkpoints == ["step-000000001.pt"]  # the good one survives keep-2; none of step 2
    assert finite_checkpoint(run_dir / "checkpoints" / checkpoints[0])
    records = strict_records(run_dir / "metrics.jsonl")
    assert records[-1]["step"] == 2 and records[-1]["loss"] == "nan" and records[-1]["train/nonfinite_step"] == 2


def _nan_on(monkeypatch, steps):
    """The local engine's forward returns a NaN loss on the train steps numbered in `steps` (1-based)."""
    calls = {"n": 0}
    forward = LocalEngine._forward

    def patched(self, batch, **kwargs):
        out = forward(self, batch, **kwargs)
        if not kwargs:
            calls["n"] += 1
            if calls["n"] in steps:
                return out * float("nan")
        return out
    monkeypatch.setattr(LocalEngine, "_forward", patched)


def test_skip_mode_drops_the_step_counts_it_and_goes_on(colour_shards, tmp_path, monkeypatch):
    _nan_on(monkeypatch, {2})
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=4) + [
        "eval.tasks=[]", "optim.nonfinite=skip", "train.checkpoint_every=1", "train.log_every=1"]
    result = train(load_config("configs/demo.yaml", overrides))
    assert math.isfinite(result.final_loss)
    records = [r for r in strict_records(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["train/skipped_steps"] for r in records] == [0, 1, 1, 1]
    assert records[1]["loss"] == "nan" and all(isinstance(r["loss"], float) for r in records[2:])
    assert all(finite_checkpoint(p) for p in (result.run_dir / "checkpoints").glob("*.pt"))


def test_skip_mode_stops_past_its_limit(colour_shards, tmp_path, monkeypatch):
    _nan_on(monkeypatch, {2, 3})
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=4) + [
        "eval.tasks=[]", "optim.nonfinite=skip", "optim.max_skipped_steps=1", "train.checkpoint_every=1"]
    from mmpretrain.errors import TrainingError
    with pytest.raises(TrainingError, match=r"step 3: loss nan .*max_skipped_steps=1"):
        train(load_config("configs/demo.yaml", overrides))
    names = sorted(p.name for p in (tmp_path / "runs" / "micro" / "checkpoints").glob("*.pt"))
    assert names == ["step-000000001.pt", "step-000000002.pt"]


def test_a_nonfinite_gradient_norm_is_not_applied(monkeypatch):
    from mmpretrain.engine.objective import ContrastiveObjective
    from mmpretrain.engine.schedule import build_scheduler, build_torch_adamw
    from mmpretrain.losses import ClipLoss
    from mmpretrain.models import ModelConfig, build_model

    torch.manual_seed(0)
    built = build_model(ModelConfig(name="mmp-test-micro"))
    config = OptimConfig(lr=1e-3, warmup_steps=1)
    optimizer = build_torch_adamw(built.model, config)
    engine = LocalEngine(ContrastiveObjective(built.model, ClipLoss()), optimizer,
                         build_scheduler(optimizer, config, 10), torch.device("cpu"))
    batch = {"image": torch.randn(4, 3, 32, 32), "text": built.tokenizer([f"c {i}" for i in range(4)])}
    engine.train_step([batch])
    assert engine.last_step.finite and engine.last_step.applied and engine.last_step.grad_norm > 0
    before = {k: v.clone() for k, v in built.model.state_dict().items()}
    hook = next(built.model.parameters()).register_hook(lambda g: g * float("inf"))
    engine.train_step([batch])
    hook.remove()
    assert not engine.last_step.finite and not engine.last_step.applied
    assert all(torch.equal(before[k], v) for k, v in built.model.state_dict().items())
    assert engine.weights_finite()


def test_metrics_log_writes_strict_json(tmp_path):
    with MetricsLog(tmp_path / "m.jsonl") as metrics:
        metrics.write(1, loss=float("nan"), up=float("inf"), down=float("-inf"), n=3, ok=0.5)
    (record,) = strict_records(tmp_path / "m.jsonl")
    assert (record["loss"], record["up"], record["down"], record["n"], record["ok"]) == ("nan", "inf", "-inf", 3, 0.5)


@pytest.mark.parametrize("key, value", [("nonfinite", "ignore"), ("max_skipped_steps", -1)])
def test_nonfinite_settings_are_checked(key, value):
    with pytest.raises(ConfigError, match=f"optim.{key}"):
        OptimConfig(**{key: value}).validate()
