"""data.synthetic: one pre-built random batch per rank with a real batch's keys, dtypes and shapes, behind the same
interface as the shard stream, trained through the CLI, saved and resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmpretrain.cli import main
from mmpretrain.config import RunConfig, load_config
from mmpretrain.data.augment import build_train_transform
from mmpretrain.data.factory import build_train_loader
from mmpretrain.data.loader import TrainLoader
from mmpretrain.data.stages import StageEnv
from mmpretrain.data.synthetic import SyntheticLoader
from mmpretrain.engine.checkpoint import load_checkpoint
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.errors import ConfigError
from mmpretrain.models import build_model
from tests.conftest import audio_overrides, micro_overrides, write_colour_shards

CPU = torch.device("cpu")
# the micro towers plus the micro audio tower, several positives, hard negatives, and a presence mask
AUDIO_NEGATIVES = ["model.towers=[image,text,audio]", "model.init_logit_bias=-10", *audio_overrides(),
                   "data.positives_per_sample=2", "data.negatives_per_sample=2", "data.optional=[audio]"]


def micro_config(shards: Path, tmp_path: Path, *extra: str) -> RunConfig:
    return load_config("configs/demo.yaml", [*micro_overrides(shards, tmp_path / "runs"), "eval.tasks=[]", *extra])


def stage_env(config: RunConfig) -> StageEnv:
    """The stage env as run.py builds it."""
    built = build_model(config.model, config.loss.name)
    transform = build_train_transform(built.preprocess, config.data.augment)
    return StageEnv(config.data, transform, built.tokenizer, tuple(config.model.towers),
                    config.model.audio if "audio" in config.model.towers else None)


def layout(batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {key: (value.dtype, tuple(value.shape)) for key, value in batch.items()}


@pytest.mark.parametrize("extra, shard_kind", [
    ((), {}),
    (tuple(AUDIO_NEGATIVES), {"hard_negatives": True, "audio": True}),
    (("data.negatives_per_sample=2", "data.online_negatives.types=[negate]"), {}),
], ids=["image-text", "audio-positives-negatives", "online-negatives"])
def test_the_synthetic_batch_has_a_real_batchs_keys_dtypes_and_shapes(tmp_path, extra, shard_kind):
    write_colour_shards(tmp_path / "shards", **shard_kind)
    real_config = micro_config(tmp_path / "shards", tmp_path, *extra)
    real = TrainLoader(real_config.data, stage_env(real_config), seed=0).next_batch()
    # no shards at all: data.train empty
    config = micro_config(tmp_path / "shards", tmp_path, *extra, "data.train=[]", "data.synthetic=true")
    loader = build_train_loader(config.data, stage_env(config), 0, 0, 1, CPU)
    assert isinstance(loader, SyntheticLoader)
    synthetic = loader.next_batch()
    assert layout(synthetic) == layout(real)
    expected = {"image", "text"} | ({"negative_text"} if extra else set()) | (
        {"audio", "audio_mask"} if "audio" in config.model.towers else set())
    assert set(synthetic) == expected
    assert synthetic["image"].dtype == torch.uint8 and synthetic["image"].shape[-2:] == (32, 32)
    assert synthetic["text"].shape[-1] == 16  # the micro tokenizer's context length
    assert synthetic["image"].float().std() > 50  # random pixels, not a blank placeholder
    assert loader.next_batch()["image"] is synthetic["image"]  # the same tensors every step, no copy


def test_the_same_seed_gives_the_same_batch_and_another_seed_or_rank_another(tmp_path):
    config = micro_config(tmp_path, tmp_path, *AUDIO_NEGATIVES, "data.train=[]", "data.synthetic=true")
    env = stage_env(config)

    def batch(seed: int, rank: int = 0) -> dict[str, torch.Tensor]:
        return SyntheticLoader(config.data, env, seed, rank, 2, CPU).next_batch()

    first, again = batch(0), batch(0)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    for other in (batch(1), batch(0, rank=1)):
        assert not torch.equal(first["image"], other["image"]) and not torch.equal(first["text"], other["text"])
        assert not torch.equal(first["audio"], other["audio"])
    rows = first["text"][:, 0]
    assert len({tuple(row.tolist()) for row in rows}) == rows.shape[0]  # the rows of a batch differ


def test_skip_report_has_the_real_keys_with_zero_skips_and_state_counts_batches(colour_shards, tmp_path):
    real_config = micro_config(colour_shards, tmp_path, "data.skip_window=12")
    config = micro_config(colour_shards, tmp_path, "data.skip_window=12", "data.synthetic=true")
    real = TrainLoader(real_config.data, stage_env(real_config), seed=0)
    synthetic = build_train_loader(config.data, stage_env(config), 0, 0, 1, CPU)  # shards given: ignored
    for _ in range(3):
        for loader in (real, synthetic):
            loader.next_batch()
            report, error = loader.skip_report()
            assert error is None
        assert synthetic.skip_report()[0].keys() == real.skip_report()[0].keys()
    assert synthetic.skip_report()[0] == {"data/skipped": 0.0, "data/skip_fraction": 0.0}
    state = synthetic.state_dict()
    assert state["batches"] == 3
    resumed = build_train_loader(config.data, stage_env(config), 0, 0, 1, CPU)
    resumed.load_state_dict([state])
    assert resumed.state_dict()["batches"] == 3
    # a real stream's position cannot continue synthetically, nor the other way round: one line each
    with pytest.raises(ConfigError, match="real shard stream's") as refused:
        resumed.load_state_dict([real.state_dict()])
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="synthetic-data run's") as refused:
        TrainLoader(real_config.data, stage_env(real_config), seed=0).load_state_dict([state])
    assert "\n" not in str(refused.value)
    synthetic.close()
    with pytest.raises(RuntimeError, match="closed"):
        synthetic.next_batch()


def test_cli_trains_on_synthetic_batches_without_shards_and_resumes(tmp_path, capsys):
    overrides = [*micro_overrides(tmp_path / "no-shards", tmp_path / "runs", steps=2), "data.train=[]",
                 "data.synthetic=true", "eval.tasks=[]", "train.log_every=1", "train.checkpoint_every=2"]
    assert main(["train", "demo", *overrides]) == 0
    run_dir = tmp_path / "runs" / "micro"
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 and r["data/skipped"] == 0 for r in records)
    assert json.loads((run_dir / "data_manifest.json").read_text()) == {"sources": {}}
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == ["step-000000002.pt"]

    assert main(["train", "demo", *overrides, "train.steps=4", "--resume", "latest"]) == 0
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "step-000000004.pt")
    assert checkpoint["data"][0]["kind"] == "synthetic" and checkpoint["data"][0]["batches"] == 4

    # the same run without synthetic data: refused before anything changes, naming the key
    write_colour_shards(tmp_path / "shards")
    capsys.readouterr()
    assert main(["train", "demo", *overrides, "data.synthetic=false", f"data.train=[{tmp_path / 'shards'}]",
                 "train.steps=6", "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.synthetic: True -> False" in err
