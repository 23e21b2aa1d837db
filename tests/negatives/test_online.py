"""Online hard negatives (`data.online_negatives`, stage `generated_negatives`): seeded per sample, new per pass,
exact at resume, and fed to the loss as `negative_text`."""

import random
import zlib

import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.data.config import DataConfig, declared_members
from mmpretrain.data.loader import TrainLoader
from mmpretrain.data.online_negatives import OnlineNegatives, OnlineNegativesConfig
from mmpretrain.data.skips import SampleSkipped
from mmpretrain.data.stages import SampleContext, StageEnv, build_stages, default_stage_names
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.errors import ConfigError
from mmpretrain.negatives.base import Negative
from mmpretrain.negatives.select import mixed_negatives
from mmpretrain.train import train
from tests.conftest import micro_overrides, no_tokens, pixel_id, write_colour_shards, write_id_shards

CAPTIONS = ["a small red square left of a big blue circle", "a red square and a blue circle"]
TYPES = ["replace_attribute", "swap_attributes", "replace_object", "negate"]


def _online(k=4, **mix) -> OnlineNegatives:
    return OnlineNegatives(OnlineNegativesConfig(types=TYPES, mix=mix), k)


def test_the_same_seed_and_sample_give_the_same_negatives_and_another_seed_others():
    generate = _online()
    first = generate(CAPTIONS, "000000001", 7)
    assert len(first) == 4 and first == _online()(CAPTIONS, "000000001", 7)  # a fresh instance (a worker) too
    assert not {c.lower() for c in CAPTIONS} & {n.lower() for n in first}
    assert generate(CAPTIONS, "000000001", 8) != first  # the next pass's seed
    assert generate(CAPTIONS, "000000002", 7) != first  # another sample


def test_the_mix_sets_the_share_of_each_type_and_inapplicable_types_leave_the_draw():
    pools = {"a": [Negative(f"a{i}", "a") for i in range(100)], "b": [Negative(f"b{i}", "b") for i in range(100)],
             "never": []}
    drawn = mixed_negatives(pools.__getitem__, {"a": 3, "b": 1, "never": 50}, 80, random.Random(0))
    types = [n.type for n in drawn]
    assert len(drawn) == 80 and len({n.text for n in drawn}) == 80
    assert 50 <= types.count("a") <= 70  # ~3:1; "never" had nothing, so the others filled its slots
    # Every type exhausted: fewer than k come back.
    assert len(mixed_negatives(lambda t: [Negative("x", t)], {"a": 1, "b": 1}, 5, random.Random(0))) == 1


def test_config_picks_the_generating_stage_and_does_not_read_neg_json():
    config = DataConfig(negatives_per_sample=2, online_negatives=OnlineNegativesConfig(types=["negate"]))
    names = default_stage_names(config)
    assert "generated_negatives" in names and "negatives" not in names
    assert names.index("generated_negatives") < names.index("negative_tokens")
    assert "neg.json" not in declared_members(config)
    assert "neg.json" in declared_members(DataConfig(negatives_per_sample=2))
    with pytest.raises(ConfigError, match="needs data.negatives_per_sample >= 1"):
        load_config(None, ["data.online_negatives.types=[negate]"])
    with pytest.raises(ConfigError, match="unknown negative type 'swap'"):
        load_config(None, ["data.negatives_per_sample=1", "data.online_negatives.types=[swap]"])
    loaded = load_config(None, ["data.negatives_per_sample=3", "data.online_negatives.types=[negate,count]",
                                "data.online_negatives.mix={negate: 2}"])
    assert loaded.data.online_negatives.weights() == {"negate": 2.0, "count": 1.0}
    mixed = DataConfig(negatives_per_sample=1, online_negatives=OnlineNegativesConfig(types=["negate"]),
                       stages=["captions", "negatives"])
    with pytest.raises(ConfigError, match="name 'generated_negatives' instead"):
        build_stages(StageEnv(mixed, pixel_id, no_tokens))


def test_a_sample_no_type_applies_to_is_a_counted_skip():
    config = DataConfig(negatives_per_sample=1, online_negatives=OnlineNegativesConfig(types=["count"]),
                        stages=["captions", "generated_negatives"])
    stages = build_stages(StageEnv(config, pixel_id, no_tokens))
    sample = {"__key__": "k", "txt": b"a red square"}  # no number to change
    with pytest.raises(SampleSkipped) as caught:
        for stage in stages:
            sample = stage(sample, SampleContext(0, random.Random(0)))
    assert caught.value.reason == "negatives_unavailable"


def crc_tokens(captions: list[str]) -> torch.Tensor:
    """A tokenizer whose 'tokens' identify the text, so a test can see which negatives were drawn."""
    return torch.tensor([[zlib.crc32(c.encode())] for c in captions])


def test_each_pass_draws_new_negatives_for_a_sample_and_a_rebuilt_stream_the_same(tmp_path):
    folder = tmp_path / "ids"
    write_id_shards(folder, 0, [6, 6], caption="a small red square left of a big blue circle")
    config = DataConfig(train=[str(folder)], batch_size=4, num_workers=0, shuffle_buffer=1, negatives_per_sample=1,
                        online_negatives=OnlineNegativesConfig(types=["replace_attribute", "replace_object"]))
    config.limits.min_side = 1

    def negatives_by_pass(seed: int) -> list[dict[int, int]]:
        loader = TrainLoader(config, StageEnv(config, pixel_id, crc_tokens), seed, 0, 1)
        passes: list[dict[int, int]] = [{}, {}]
        for _ in range(6):  # 24 samples: two passes over 12
            batch = loader.next_batch()
            for sample_id, negative in zip(batch["image"].tolist(), batch["negative_text"][:, 0, 0].tolist()):
                passes[0 if sample_id not in passes[0] else 1][sample_id] = negative
        return passes

    first, second = negatives_by_pass(3)
    assert sorted(first) == sorted(second) == list(range(12))
    assert negatives_by_pass(3) == [first, second]
    assert sum(first[i] != second[i] for i in range(12)) >= 9  # dozens of edits: a repeat is rare


def _run(shards, tmp_path, name, steps, *extra):
    overrides = micro_overrides(shards, tmp_path / "runs", steps=steps) + [
        "eval.tasks=[]", "train.log_every=1", "data.batch_size=3", "data.shuffle_buffer=5",
        "optim.min_lr_ratio=1.0", "train.keep_checkpoints=100", f"run_name={name}", "data.num_workers=2",
        "data.negatives_per_sample=2", "data.online_negatives.types=[replace_attribute,negate,replace_object]",
        "data.online_negatives.mix={replace_attribute: 2}", *extra]
    return load_config("configs/demo.yaml", overrides)


def test_training_with_online_negatives_resumes_exactly(tmp_path):
    shards = tmp_path / "shards"
    write_colour_shards(shards, n_shards=2, per_shard=8)  # 16 samples, batches of 3: steps cross passes
    whole = train(_run(shards, tmp_path, "whole", 8))
    assert whole.final_loss == whole.final_loss and abs(whole.final_loss) < 1e6
    expected = {r["step"]: r["loss"] for r in read_metrics(whole.run_dir / "metrics.jsonl") if "loss" in r}
    assert sorted(expected) == list(range(1, 9))

    half = train(_run(shards, tmp_path, "halves", 4, "train.checkpoint_every=4"))
    train(_run(shards, tmp_path, "halves", 8, "train.checkpoint_every=4"), resume="latest")
    got = {r["step"]: r["loss"] for r in read_metrics(half.run_dir / "metrics.jsonl") if "loss" in r}
    steps = list(range(5, 9))
    torch.testing.assert_close(torch.tensor([got[s] for s in steps]), torch.tensor([expected[s] for s in steps]),
                               rtol=1e-6, atol=1e-6)
