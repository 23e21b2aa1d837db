import json
import math

import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.engine.local import LocalEngine
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.engine.objective import ContrastiveObjective
from mmpretrain.engine.schedule import OptimConfig, build_scheduler, build_torch_adamw
from mmpretrain.errors import ConfigError
from mmpretrain.losses import ClipLoss, SigLipLoss
from mmpretrain.models import ModelConfig, build_model
from mmpretrain.train import train
from tests.conftest import micro_overrides

EVAL_TASKS = [
    "eval.tasks=[{name: colours, kind: zeroshot, data: DATA, label_key: label, classnames: [red, green, blue],"
    " templates: ['a {} square']}, {name: colours, kind: retrieval, data: DATA}]",
]


def eval_overrides(data_dir):
    return [t.replace("DATA", str(data_dir)) for t in EVAL_TASKS]


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    built = build_model(ModelConfig(name="mmp-test-micro"))
    config = OptimConfig(lr=3e-3, warmup_steps=1, weight_decay=0.0)
    optimizer = build_torch_adamw(built.model, config)
    engine = LocalEngine(ContrastiveObjective(built.model, ClipLoss()), optimizer,
                         build_scheduler(optimizer, config, 100), torch.device("cpu"))
    batch = {"image": torch.randn(8, 3, 32, 32),
             "text": built.tokenizer([f"caption number {i}" for i in range(8)])}
    losses = [engine.train_step([batch]).item() for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("loss", [ClipLoss(), SigLipLoss(chunk_size=4)])
def test_steps_with_several_positives_and_hard_negatives_lower_the_loss(loss):
    torch.manual_seed(0)
    built = build_model(ModelConfig(name="mmp-test-micro", init_logit_bias=-10.0))
    config = OptimConfig(lr=3e-3, warmup_steps=1, weight_decay=0.0)
    optimizer = build_torch_adamw(built.model, config)
    engine = LocalEngine(ContrastiveObjective(built.model, loss), optimizer, build_scheduler(optimizer, config, 100),
                         torch.device("cpu"))
    tokens = built.tokenizer([f"caption number {i}" for i in range(16)])
    batch = {"image": torch.randn(4, 3, 32, 32), "text": tokens[:8].view(4, 2, -1),
             "negative_text": tokens[8:].view(4, 2, -1)}
    losses = [engine.train_step([batch]).item() for _ in range(12)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0], losses


def test_siglip_trains_from_config_and_needs_its_bias(colour_shards, tmp_path):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=3) + ["eval.tasks=[]", "loss.name=siglip"]
    with pytest.raises(ConfigError, match="model.init_logit_bias"):
        load_config("configs/demo.yaml", overrides)
    config = load_config("configs/demo.yaml", overrides + ["model.init_logit_bias=-10", "model.init_logit_scale=2.3",
                                                           "loss.chunk_size=4"])
    result = train(config)
    assert math.isfinite(result.final_loss)
    records = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert records and records[0]["logit_scale"] == pytest.approx(10.0, rel=0.05)


def test_train_writes_run_directory_and_resumes(colour_shards, tmp_path):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=4) + eval_overrides(colour_shards)
    config = load_config("configs/demo.yaml", overrides + ["train.checkpoint_every=2"])
    result = train(config)
    run_dir = tmp_path / "runs" / "micro"
    assert result.run_dir == run_dir
    assert load_config(run_dir / "config.yaml") == config  # the resolved config is in the run directory
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-000000002.manifest.json", "step-000000002.pt", "step-000000004.manifest.json", "step-000000004.pt"]

    records = read_metrics(run_dir / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4]
    assert all(r["samples_per_s"] > 0 and r["logit_scale"] > 1 for r in train_records)
    assert train_records[0]["lr"] > 0 and train_records[-1]["lr"] == pytest.approx(0.0)  # cosine reaches 0

    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"zeroshot/colours/top1", "retrieval/colours/image_to_text_R@1"}
    assert all(0.0 <= v <= 1.0 for v in results.values())

    with pytest.raises(FileExistsError, match="--resume latest"):
        train(config)
    longer = load_config(run_dir / "config.yaml", ["train.steps=6"])
    resumed = train(longer, resume="latest")
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == [2, 4, 6]  # continued from step 4, not from 0
    assert resumed.final_loss == resumed.final_loss  # a number, not NaN
