import pytest
import torch

from mmpretrain.engine.schedule import OptimConfig, build_optimizer, build_scheduler, warmup_cosine
from mmpretrain.models import MultiTower


def test_warmup_then_cosine_to_floor():
    assert warmup_cosine(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_gains_biases_and_contrastive_head():
    towers = {"image": torch.nn.Linear(4, 3), "text": torch.nn.LayerNorm(3)}
    model = MultiTower(towers, torch.nn.Parameter(torch.tensor(2.0)), torch.nn.Parameter(torch.tensor(-10.0)))
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.3))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert names == {"towers.image.weight"}


def test_scheduler_follows_the_formula():
    model = torch.nn.Linear(2, 2)
    config = OptimConfig(lr=1.0, warmup_steps=2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps=6)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([warmup_cosine(s, 2, 6, 0.0) for s in range(6)])
