"""What a resume may change: breaking changes refused before the run directory is touched, legitimate ones take
effect and are recorded in config.<step>.yaml (config.yaml stays the run's first config)."""

import logging

import pytest

from mmpretrain.cli import main, parse_args
from mmpretrain.config import config_to_dict, load_config
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.engine.schedule import warmup_cosine
from mmpretrain.errors import ConfigError
from mmpretrain.resume import config_differences, shard_differences
from mmpretrain.train import train
from tests.conftest import micro_overrides, write_colour_shards


def _config(shards, tmp_path, *extra, steps=4):
    return load_config("configs/demo.yaml", micro_overrides(shards, tmp_path / "runs", steps=steps)
                       + ["eval.tasks=[]", "train.checkpoint_every=2", "train.log_every=1", *extra])


def test_differences_are_leaf_keys_and_shard_lists_are_described():
    old = {"model": {"name": "a", "dims": [1, 2]}, "optim": {"lr": 1.0}, "run_name": "x"}
    new = {"model": {"name": "b", "dims": [1, 2]}, "optim": {"lr": 2.0}, "run_name": "y"}
    assert config_differences(old, new) == {"model.name": ("a", "b"), "optim.lr": (1.0, 2.0)}
    found = shard_differences({"train": ["/d/s0.tar"]}, {"train": ["/d/s0.tar", "/d/s1.tar"]})
    assert found == {"data.shards.train": ("1 shards", "2 shards (+['s1.tar'])")}
    assert shard_differences({"train": ["a"]}, {"train": ["a"]}) == {}


def test_cli_takes_allow_changes():
    args = parse_args(["train", "demo", "--resume", "latest", "--allow-changes", "model,data.shards"])
    assert args.allow_changes == "model,data.shards"
    assert parse_args(["train", "demo"]).allow_changes == ""


def test_a_changed_lr_at_resume_takes_effect_and_is_recorded(colour_shards, tmp_path):
    config = _config(colour_shards, tmp_path, "optim.lr=1e-3", "optim.min_lr_ratio=0.5", steps=4)
    run_dir = train(config).run_dir
    first = (run_dir / "config.yaml").read_text()
    assert (run_dir / "data_manifest.json").is_file()

    longer = _config(colour_shards, tmp_path, "optim.lr=2e-4", "optim.min_lr_ratio=0.5", steps=8)
    train(longer, resume="latest")
    assert (run_dir / "config.yaml").read_text() == first  # the run's first config, never rewritten
    assert load_config(run_dir / "config.4.yaml") == longer  # the config used from step 4 on
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}
    assert lrs[4] == pytest.approx(1e-3 * warmup_cosine(4, 1, 4, 0.5))
    for step in range(5, 9):  # the new schedule, from the restored step on
        assert lrs[step] == pytest.approx(2e-4 * warmup_cosine(step, 1, 8, 0.5)), step


def test_a_shard_added_between_runs_is_refused_naming_the_source(tmp_path):
    shards = tmp_path / "shards"
    write_colour_shards(shards, n_shards=2)
    config = _config(shards, tmp_path, steps=2)
    run_dir = train(config).run_dir
    write_colour_shards(shards, n_shards=3)  # one more shard in the same folder
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with pytest.raises(ConfigError, match=r"data\.shards\.train: '2 shards' -> \"3 shards \(\+\['shard-000002.tar'\]"):
        train(_config(shards, tmp_path, steps=4), resume="latest")
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # nothing was written


def test_a_changed_model_is_refused_untouched_then_resumes_with_its_own_config_or_allowed(colour_shards, tmp_path,
                                                                                          capsys, caplog):
    config = _config(colour_shards, tmp_path, steps=2)
    run_dir = train(config).run_dir
    first = (run_dir / "config.yaml").read_text()
    changed = _config(colour_shards, tmp_path, "model.init_logit_scale=2.0", steps=4)
    with pytest.raises(ConfigError, match=r"model\.init_logit_scale: None -> 2\.0.*--allow-changes"):
        train(changed, resume="latest")
    assert (run_dir / "config.yaml").read_text() == first
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml"]

    # The CLI: one line, exit 2.
    argv = ["train", "demo", *micro_overrides(colour_shards, tmp_path / "runs", steps=4), "eval.tasks=[]",
            "train.checkpoint_every=2", "model.init_logit_scale=2.0", "--resume", "latest"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.init_logit_scale" in err

    # Its own config (with a legitimate train.steps) still resumes.
    own = load_config(run_dir / "config.yaml", ["train.steps=4"])
    train(own, resume="latest")
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r][-1] == 4

    # Named in allow_changes, the breaking change goes through with a warning line.
    allowed = _config(colour_shards, tmp_path, "model.init_logit_scale=2.0", steps=6)
    with caplog.at_level(logging.WARNING, logger="mmpretrain"):
        train(allowed, resume="latest", allow_changes=["model.init_logit_scale"])
    assert any("allowed by --allow-changes" in r.getMessage() and "model.init_logit_scale" in r.getMessage()
               for r in caplog.records)
    assert load_config(run_dir / "config.2.yaml") == own and load_config(run_dir / "config.4.yaml") == allowed
    assert (run_dir / "config.yaml").read_text() == first


def test_a_key_added_after_the_run_started_reads_as_the_old_behaviour():
    """A checkpoint written before loss.impl / data.synthetic / train.malloc / optim.fused existed: the first two's
    defaults compute what the old run computed; train.malloc and optim.fused differ, and may (check_resume's
    LEGITIMATE: neither changes the update beyond rounding)."""
    new = config_to_dict(load_config(None))
    old = {section: dict(values) if isinstance(values, dict) else values for section, values in new.items()}
    for section, key in (("loss", "impl"), ("data", "synthetic"), ("train", "malloc"), ("optim", "fused")):
        del old[section][key]
    assert config_differences(old, new) == {"optim.fused": (False, True), "train.malloc": ("system", "tuned")}
    new_unfused = config_to_dict(load_config(None, ["optim.fused=false", "train.malloc=system"]))
    assert config_differences(old, new_unfused) == {}


def test_a_resume_with_another_optim_fused_runs_the_implementation_asked_for():
    """torch's load_state_dict would restore the checkpoint's `fused` flag: the optimizer build_torch_adamw makes
    keeps its own (schedule.keep_own_implementation), and the fused step then runs on the restored state."""
    import torch

    from mmpretrain.engine.schedule import OptimConfig, build_torch_adamw
    from mmpretrain.resume import LEGITIMATE

    def adamw(params, fused: bool) -> torch.optim.Optimizer:
        return build_torch_adamw(torch.nn.ParameterList(params), OptimConfig(lr=0.1, weight_decay=0.0, fused=fused))

    assert "optim.fused" in LEGITIMATE
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(4, 3))
    saved = adamw([weights], fused=False)  # torch's default off CUDA
    for _ in range(2):
        weights.grad = torch.randn(4, 3)
        saved.step()
    resumed = adamw([weights], fused=True)
    resumed.load_state_dict(saved.state_dict())
    assert resumed.param_groups[0]["fused"] is True
    weights.grad = torch.randn(4, 3)
    resumed.step()
    assert float(resumed.state[weights]["step"]) == 3.0
    plain = adamw([weights], fused=False)
    plain.load_state_dict(resumed.state_dict())
    assert not plain.param_groups[0]["fused"]
