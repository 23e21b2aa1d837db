import pytest
import torch

from mmpretrain.engine.schedule import OptimConfig, build_scheduler, build_torch_adamw, warmup_cosine
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
    optimizer = build_torch_adamw(model, OptimConfig(weight_decay=0.3))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert names == {"towers.image.weight"}


def test_scheduler_follows_the_formula():
    model = torch.nn.Linear(2, 2)
    config = OptimConfig(lr=1.0, warmup_steps=2)
    optimizer = build_torch_adamw(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps=6)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([warmup_cosine(s, 2, 6, 0.0) for s in range(6)])


def test_optimizer_built_in_code_gets_the_config_checks():
    from mmpretrain.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.betas: two values"):
        build_torch_adamw(torch.nn.Linear(2, 2), OptimConfig(betas=[0.9]))
    with pytest.raises(ConfigError, match="optim.weight_decay"):
        build_torch_adamw(torch.nn.Linear(2, 2), OptimConfig(weight_decay=-1.0))


def test_optimizer_choice_and_refusals():
    from mmpretrain.engine.factory import EngineConfig, optimizer_impl
    from mmpretrain.errors import ConfigError

    deepspeed, offload = EngineConfig(name="deepspeed"), EngineConfig(name="deepspeed", offload_optimizer=True)
    assert optimizer_impl(OptimConfig(), deepspeed) == "torch"
    assert optimizer_impl(OptimConfig(), offload) == "deepspeed"  # ZeRO-Offload refuses torch's AdamW
    assert optimizer_impl(OptimConfig(impl="deepspeed"), EngineConfig()) == "deepspeed"
    with pytest.raises(ConfigError, match="optim.impl=auto"):
        optimizer_impl(OptimConfig(impl="torch"), offload)
    with pytest.raises(ConfigError, match="needs engine.name=deepspeed"):
        optimizer_impl(OptimConfig(), EngineConfig(offload_optimizer=True))


def test_deepspeed_cpu_adamw_takes_the_same_steps_as_torch_adamw(monkeypatch, tmp_path):
    """DeepSpeedCPUAdam (offload's optimizer) against torch's AdamW, same groups, decay and schedule."""
    import copy
    from pathlib import Path

    from mmpretrain.engine.factory import EngineConfig, build_optimizer

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
    torch.manual_seed(0)
    towers = {"image": torch.nn.Linear(6, 4), "text": torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4))}
    reference = MultiTower(towers, torch.nn.Parameter(torch.tensor([2.0])), None)
    candidate = copy.deepcopy(reference)
    config = OptimConfig(lr=1e-2, weight_decay=0.2, warmup_steps=2, impl="deepspeed")
    optimizers = [build_torch_adamw(reference, config), build_optimizer(candidate, config, EngineConfig(),
                                                                        torch.device("cpu"))]
    assert type(optimizers[1]).__name__ == "DeepSpeedCPUAdam"
    schedulers = [build_scheduler(o, config, total_steps=5) for o in optimizers]
    for _ in range(5):
        x = torch.randn(3, 6)
        for model, optimizer, scheduler in zip((reference, candidate), optimizers, schedulers):
            optimizer.zero_grad()
            image, text = model.towers["image"](x), model.towers["text"](x)
            ((image * text).sum() * model.logit_scale.exp()).sum().backward()
            optimizer.step()
            scheduler.step()
    for (name, a), (_, b) in zip(reference.named_parameters(), candidate.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _trained_scheduler(config, total_steps, steps):
    model = torch.nn.Linear(2, 2)
    optimizer = build_torch_adamw(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_restored_schedule_is_unchanged_when_the_config_is():
    config = OptimConfig(lr=1.0, warmup_steps=2)
    _, optimizer, scheduler = _trained_scheduler(config, 10, 4)
    model2 = torch.nn.Linear(2, 2)
    optimizer2 = build_torch_adamw(model2, config)
    scheduler2 = build_scheduler(optimizer2, config, 10)
    optimizer2.load_state_dict(optimizer.state_dict())
    scheduler2.load_state_dict(scheduler.state_dict())
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]
    scheduler.step(), scheduler2.step()
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()


def test_a_schedule_changed_at_restore_takes_effect_from_the_restored_step():
    old = OptimConfig(lr=1.0, warmup_steps=2)
    _, optimizer, scheduler = _trained_scheduler(old, 10, 4)
    new = OptimConfig(lr=0.1, warmup_steps=2, min_lr_ratio=0.5)
    model2 = torch.nn.Linear(2, 2)
    optimizer2 = build_torch_adamw(model2, new)
    scheduler2 = build_scheduler(optimizer2, new, 20)
    optimizer2.load_state_dict(optimizer.state_dict())  # carries the old lrs
    scheduler2.load_state_dict(scheduler.state_dict())
    assert scheduler2.last_epoch == 4
    expected = 0.1 * warmup_cosine(4, 2, 20, 0.5)
    assert [g["lr"] for g in optimizer2.param_groups] == pytest.approx([expected, expected])
    optimizer2.step(), scheduler2.step()
    assert scheduler2.get_last_lr() == pytest.approx([0.1 * warmup_cosine(5, 2, 20, 0.5)] * 2)
