"""N towers: pair resolution, the weighted sum of pair losses with presence masks (against open_clip's losses on the
complete pairs), GradCache with masks, locked (LiT) towers, and the configs in configs/ that train them."""

import copy
import math

import open_clip.loss as oc_loss
import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.engine.local import LocalEngine
from mmpretrain.engine.objective import ContrastiveObjective, build_pair_losses
from mmpretrain.engine.schedule import OptimConfig, build_scheduler, build_torch_adamw
from mmpretrain.errors import ConfigError
from mmpretrain.models import build_model
from mmpretrain.models.pairs import PairConfig, resolve_pairs
from mmpretrain.paths import resolve_config_path
from mmpretrain.train import train
from tests.conftest import audio_overrides, keep_config_towers, micro_overrides, write_colour_shards

TOWERS = ["image", "text", "audio"]


def keys(configs, towers=TOWERS, default="clip"):
    return [(p.key, p.loss, p.weight) for p in resolve_pairs(configs, towers, default)]


def test_pairs_resolve_all_anchor_explicit_and_refuse_ambiguity():
    assert keys([]) == [("image_text", "clip", 1.0), ("image_audio", "clip", 1.0), ("audio_text", "clip", 1.0)]
    assert keys([PairConfig(["text", "*"])]) == [("image_text", "clip", 1.0), ("audio_text", "clip", 1.0)]
    # text is always second (its [B, P, D] positives and hard negatives are the columns); explicit beats '*'
    assert keys([PairConfig(["*", "*"], weight=0.5), PairConfig(["text", "audio"], loss="siglip")]) == [
        ("image_text", "clip", 0.5), ("image_audio", "clip", 0.5), ("audio_text", "siglip", 1.0)]
    siglip = resolve_pairs([PairConfig(["audio", "text"], loss="siglip")], TOWERS, "clip")[0]
    assert siglip.init_logit_bias == -10.0 and math.isclose(siglip.init_logit_scale, math.log(10))
    for configs, message in [
        ([PairConfig(["audio", "text"]), PairConfig(["text", "audio"])], r"model.pairs\[1\]: the pair audio-text"),
        ([PairConfig(["audio", "video"])], r"model.pairs\[0\].between: 'video' is not one of model.towers"),
        ([PairConfig(["audio"])], "name two towers"),
        ([PairConfig(["text", "text"])], "names no pair of two different towers"),
        ([PairConfig(["audio", "text"], init_logit_bias=-5)], "only a sigmoid pair"),
        ([PairConfig(["image", "text"], init_logit_scale=1.0)], "set model.init_logit_scale"),
        ([PairConfig(["audio", "text"], weight=0)], "weight: must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_pairs(configs, TOWERS, "clip")


def three_tower_config(*extra):
    return load_config(None, ["model.name=mmp-test-micro", "model.towers=[image,text,audio]",
                              "model.init_logit_bias=-10", *audio_overrides(), *extra])


def batch_with_masks(tokenizer, n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=generator, dtype=torch.float64),
            "text": tokenizer([f"caption {i}" for i in range(n)]),
            "audio": (torch.randn(n, 4000, generator=generator) * 3000).to(torch.int16),
            "image_mask": torch.tensor([True, False, True, True, False, True, True, True][:n]),
            "audio_mask": torch.tensor([True, True, False, True, True, False, True, True][:n])}


def test_the_objective_is_the_weighted_sum_of_open_clip_losses_on_each_pairs_complete_samples():
    config = three_tower_config("model.pairs=[{between: [image, text], loss: siglip, weight: 0.5},"
                                "{between: [audio, text], weight: 2.0}, {between: [image, audio]}]")
    torch.manual_seed(0)
    built = build_model(config.model, config.loss.name)
    model = built.model.double()
    objective = ContrastiveObjective(model, build_pair_losses(model.pairs, None))
    objective.train()
    batch = batch_with_masks(built.tokenizer)
    torch.manual_seed(1)  # SpecAugment draws: the same in both forwards
    ours = objective(batch)
    ours.backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    torch.manual_seed(1)
    features = model(batch)
    present = {"image": batch["image_mask"], "text": torch.ones(8, dtype=torch.bool), "audio": batch["audio_mask"]}
    reference = torch.zeros((), dtype=torch.float64)
    for pair in model.pairs:
        keep = present[pair.first] & present[pair.second]
        a, b = features[pair.first][keep], features[pair.second][keep]
        log_scale, bias = model.head(pair)
        scale = log_scale.clamp(0, model.max_log_scale).exp()
        if pair.loss == "siglip":
            value = oc_loss.SigLipLoss()(a, b, scale, bias)
        else:
            value = oc_loss.ClipLoss()(a, b, scale)
        reference = reference + pair.weight * value
    reference.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    for name, param in model.named_parameters():
        if name in ours_grads:
            torch.testing.assert_close(ours_grads[name], param.grad, rtol=1e-8, atol=1e-12, msg=name)
    assert set(ours_grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    assert {"pair_scales.audio_text", "pair_scales.image_audio"} <= set(ours_grads)  # every pair's own temperature
    assert objective.last_pair_stats.keys() == {f"{p.key}/{s}" for p in model.pairs for s in ("loss", "logit_scale")}


def engine_for(model):
    config = OptimConfig(lr=1e-3, warmup_steps=1)
    optimizer = build_torch_adamw(model, config)
    objective = ContrastiveObjective(model, build_pair_losses(model.pairs, None))
    return LocalEngine(objective, optimizer, build_scheduler(optimizer, config, 10), torch.device("cpu"),
                       grad_clip=None)


def test_gradcache_with_presence_masks_equals_the_whole_batch():
    config = three_tower_config("model.audio.spec_augment.num_time_masks=0", "model.audio.spec_augment.num_freq_masks=0")
    torch.manual_seed(0)
    built = build_model(config.model, config.loss.name)
    model = built.model.double()
    batch = batch_with_masks(built.tokenizer)
    whole, accumulated = engine_for(model), engine_for(copy.deepcopy(model))
    loss_whole = whole.train_step([batch])
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    loss_accumulated = accumulated.train_step(halves)
    torch.testing.assert_close(loss_accumulated, loss_whole, rtol=1e-12, atol=1e-12)
    reference = dict(whole.model.named_parameters())
    for name, param in accumulated.model.named_parameters():
        if reference[name].grad is None:
            assert param.grad is None or not param.grad.any(), name
        else:
            torch.testing.assert_close(param.grad, reference[name].grad, rtol=1e-9, atol=1e-12, msg=name)


def test_locked_towers_do_not_train_hold_no_optimizer_state_and_stay_in_eval_mode():
    config = three_tower_config("model.image.locked=true", "model.text.locked=true",
                                "model.pairs=[{between: [audio, text]}]")
    torch.manual_seed(0)
    built = build_model(config.model, config.loss.name)
    model = built.model
    before = copy.deepcopy(model.state_dict())
    engine = engine_for(model)
    batch = {k: v for k, v in batch_with_masks(built.tokenizer).items() if not k.endswith("_mask")}
    batch["image"] = batch["image"].float()
    model.train()
    assert not model.towers["image"].training and not model.towers["text"].training and model.towers["audio"].training
    engine.train_step([batch])
    after = model.state_dict()
    for name, value in after.items():
        frozen = name.startswith(("towers.image.", "towers.text."))
        assert torch.equal(value, before[name]) == frozen or not value.is_floating_point(), name
    optimized = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in model.towers["image"].parameters())
    assert not any(id(p) in optimized for p in model.towers["text"].parameters())
    assert all(id(p) in optimized for p in model.towers["audio"].parameters())


@pytest.mark.parametrize("overrides, message", [
    (["model.towers=[image,image]"], "model.towers: name two or more different towers"),
    (["model.towers=[audio]"], "model.towers: name two or more different towers"),
    (["data.optional=[audio]"], r"data.optional names \['audio'\], which model.towers"),
    (["model.towers=[audio,text]", "model.audio.n_mels=40"], "model.audio.n_mels=40 but the encoder"),
    (["model.towers=[audio,text]", "model.audio.encoder=nope"], "model.audio.encoder: unknown audio encoder"),
    (["model.towers=[image,text]", "model.image.locked=true", "model.text.locked=true"], "every tower is locked"),
])
def test_bad_tower_configs_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        config = load_config(None, ["model.name=mmp-test-micro", *overrides])
        build_model(config.model, config.loss.name)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, missing", [
    ("clap", {}), ("bind", {"image": 3, "flac": 4}), ("lit-audio", {}),
])
def test_the_audio_configs_train(tmp_path, name, missing):
    """configs/clap.yaml, bind.yaml and lit-audio.yaml, on tiny colour shards with tones (and missing members), with
    the micro towers: the run trains and logs every pair."""
    shards = tmp_path / "shards"
    write_colour_shards(shards, n_shards=2, per_shard=12, audio=True, missing_every=missing)
    overrides = keep_config_towers(micro_overrides(shards, tmp_path / "runs", steps=4)) + audio_overrides() + [
        "eval.tasks=[]", "train.log_every=1", "run_name=" + name]
    config = load_config(str(resolve_config_path(name)), overrides)
    result = train(config)
    assert math.isfinite(result.final_loss)
    import json
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert len(losses) == 4
    if name == "bind":
        assert {"pair/image_text/loss", "pair/audio_text/loss"} <= losses[-1].keys()


def test_gradcache_replays_the_random_draws_of_stochastic_layers():
    """SpecAugment on: the surrogate pass of each micro-batch must see the masks of its features pass, so the
    accumulated gradient is the gradient of the loss the step reports (features computed once, with grad)."""
    config = three_tower_config("model.audio.spec_augment.num_time_masks=2", "model.audio.spec_augment.time_mask_param=8")
    torch.manual_seed(0)
    built = build_model(config.model, config.loss.name)
    model = built.model.double()
    batch = batch_with_masks(built.tokenizer)
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    accumulated = engine_for(model)
    reference = copy.deepcopy(model)

    torch.manual_seed(7)
    loss = accumulated.train_step(halves)
    state_after = torch.random.get_rng_state()

    torch.manual_seed(7)  # the same draws, in the same order, with one graph through both micro-batches
    objective = ContrastiveObjective(reference, build_pair_losses(reference.pairs, None))
    objective.train()
    parts = [objective(half, mode="features") for half in halves]
    features = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    expected = objective(features, mode="loss_from_features")
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    grads = dict(reference.named_parameters())
    audio_grads = 0
    for name, param in accumulated.model.named_parameters():
        if grads[name].grad is not None:
            torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)
            audio_grads += name.startswith("towers.audio.")
    assert audio_grads > 0
    assert torch.equal(state_after, torch.random.get_rng_state())  # the step consumed each draw once


def test_audio_members_obey_the_member_size_cap(tmp_path, capsys):
    """An audio member over data.limits.max_member_bytes is never read (judged from the tar header): a counted
    `member_too_large` skip; with every clip over it, the run stops with one line naming the reason."""
    from mmpretrain.cli import main

    shards = tmp_path / "shards"
    write_colour_shards(shards, n_shards=2, per_shard=6, audio=True)
    overrides = keep_config_towers(micro_overrides(shards, tmp_path / "runs", steps=2)) + audio_overrides() + [
        "eval.tasks=[]", "data.limits.max_member_bytes=1000", "data.limits.min_side=1"]
    assert main(["train", "clap", *overrides]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable sample" in err[0] and "member_too_large" in err[0], err
