"""GradCache accumulation: k micro-batches give the gradient of ONE k-times larger contrastive batch."""

import copy

import pytest
import torch

from mmpretrain.engine.local import LocalEngine
from mmpretrain.engine.objective import ContrastiveObjective
from mmpretrain.engine.schedule import OptimConfig, build_scheduler, build_torch_adamw
from mmpretrain.losses import ClipLoss, SigLipLoss
from mmpretrain.models import ModelConfig, build_model


def engine_for(model, loss) -> LocalEngine:
    config = OptimConfig(lr=1e-3, warmup_steps=1)
    optimizer = build_torch_adamw(model, config)
    return LocalEngine(ContrastiveObjective(model, loss), optimizer, build_scheduler(optimizer, config, 10),
                       torch.device("cpu"), grad_clip=None)


def split(batch: dict, parts: int) -> list[dict]:
    size = batch["image"].shape[0] // parts
    return [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(parts)]


@pytest.mark.parametrize("loss", [ClipLoss(), SigLipLoss(), SigLipLoss(chunk_size=3)])
@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_gradient_equals_the_whole_batch_gradient(loss, accum):
    torch.manual_seed(0)
    # float64, so that summation order (the only legitimate difference) stays far below the tolerance
    model = build_model(ModelConfig(name="mmp-test-micro", init_logit_bias=-10.0)).model.double()
    tokenizer = build_model(ModelConfig(name="mmp-test-micro")).tokenizer
    tokens = tokenizer([f"caption {i}" for i in range(24)])
    batch = {"image": torch.randn(8, 3, 32, 32, dtype=torch.float64), "text": tokens[:16].view(8, 2, -1),  # two positives each
             "negative_text": tokens[16:].view(8, 1, -1)}                              # one hard negative each
    whole, accumulated = engine_for(model, loss), engine_for(copy.deepcopy(model), loss)

    loss_whole = whole.train_step([batch])
    loss_accumulated = accumulated.train_step(split(batch, accum))
    torch.testing.assert_close(loss_accumulated, loss_whole, rtol=1e-12, atol=1e-12)
    grads = dict(whole.model.named_parameters())
    for name, param in accumulated.model.named_parameters():
        reference = grads[name].grad
        if reference is None:  # unused by this loss (ClipLoss ignores the bias): unused in both
            assert param.grad is None or not param.grad.any(), name
            continue
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, reference, rtol=1e-9, atol=1e-12, msg=name)
    if isinstance(loss, SigLipLoss):
        assert accumulated.model.logit_bias.grad.abs().item() > 0  # the head's gradient came through too


def test_deepspeed_sees_one_backward_per_micro_batch_and_zero3_accumulation_is_refused():
    from mmpretrain.engine.deepspeed import build_deepspeed_config
    from mmpretrain.errors import ConfigError

    with pytest.raises(ConfigError, match="accum_steps > 1 is not supported under ZeRO-3"):
        build_deepspeed_config({"zero_optimization": {"stage": 3}}, 4, "fp32", 1.0, False, accum_steps=2)
    for stage in (0, 1, 2):
        config = build_deepspeed_config({"zero_optimization": {"stage": stage}}, 4, "fp32", 1.0, False,
                                        accum_steps=3)
        assert config["gradient_accumulation_steps"] == 3  # k micro-batches = k backward passes


def test_every_backward_of_an_accumulated_step_reaches_every_parameter():
    """ZeRO-3 copies the first backward's gradients of a step into its buffers and adds the later ones, so a
    backward that reached only some parameters would leave stale gradients in the others' buffers."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mmp-test-micro", init_logit_bias=-10.0)).model
    engine = engine_for(model, SigLipLoss())
    reached: list[set[str]] = []
    names = {id(p): n for n, p in model.named_parameters()}
    original = engine._backward

    def recording_backward(loss):
        before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        original(loss)
        reached.append({n for n, p in model.named_parameters()
                        if p.grad is not None and (before[n] is None or not torch.equal(before[n], p.grad))})

    engine._backward = recording_backward
    tokens = build_model(ModelConfig(name="mmp-test-micro")).tokenizer([f"caption {i}" for i in range(8)])
    engine.train_step(split({"image": torch.randn(8, 3, 32, 32), "text": tokens}, 2))
    assert len(reached) == 2  # one backward per micro-batch
    trained = set(names.values())
    assert reached[0] == trained  # the first reaches the towers and the head (logit scale and bias)
    assert reached[1] == trained - {"logit_scale", "logit_bias"}


def test_precision_settings_reach_deepspeed_and_fp16_is_refused_where_it_cannot_run():
    from mmpretrain.engine.deepspeed import build_deepspeed_config
    from mmpretrain.engine.config import EngineConfig
    from mmpretrain.engine.factory import StepSettings, build_engine
    from mmpretrain.errors import ConfigError

    fp16 = build_deepspeed_config({"zero_optimization": {"stage": 2}}, 4, "fp16", 1.0, False)
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0 and not fp16["bf16"]["enabled"]
    bf16 = build_deepspeed_config({"zero_optimization": {"stage": 2}}, 4, "bf16", None, False)
    assert bf16["bf16"]["enabled"] and "fp16" not in bf16 and bf16["gradient_clipping"] == 0.0
    model = build_model(ModelConfig(name="mmp-test-micro")).model
    objective = ContrastiveObjective(model, ClipLoss())
    optimizer = build_torch_adamw(model, OptimConfig())
    scheduler = build_scheduler(optimizer, OptimConfig(), 10)
    for engine, message in (("local", "runs under engine.name=deepspeed"), ("deepspeed", "needs a CUDA device")):
        with pytest.raises(ConfigError, match=message):
            build_engine(EngineConfig(name=engine), objective, optimizer, scheduler,
                         StepSettings(torch.device("cpu"), "fp16", 1.0, micro_batch_size=4))
