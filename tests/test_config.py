from pathlib import Path

import pytest

from mmpretrain.config import RunConfig, load_config, save_config
from mmpretrain.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_load_without_a_file():
    config = load_config(None)
    assert isinstance(config, RunConfig)
    assert config.model.name == "mmp-tiny-vit" and config.loss.name == "clip"


def test_unknown_key_is_one_line_error_naming_key_and_file(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "optim.lrr" in message and "'lr'" in message  # suggests the right key


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"run.yaml: train.steps: .*many"):
        load_config(path)


def test_literal_choices_are_enforced(tmp_path):
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(write(tmp_path, "train: {precision: fp8}\n"))


def test_overrides_win_over_file_and_are_typed(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.1}\ntrain: {steps: 5}\n")
    config = load_config(path, ["optim.lr=2e-3", "data.train=[a,b]", "train.progress=false"])
    assert config.optim.lr == pytest.approx(2e-3)
    assert config.train.steps == 5
    assert config.data.train == ["a", "b"] and config.train.progress is False


def test_bad_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match="override 'train.stepz=3': train.stepz"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["steps"])


def test_value_checks_run_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(None, ["data.batch_size=1"])


def test_data_root_interpolation(tmp_path):
    path = write(tmp_path, "data_root: /shards\ndata:\n  train: ['${data_root}/a']\n")
    assert load_config(path).data.train == ["/shards/a"]
    assert load_config(path, ["data_root=/other"]).data.train == ["/other/a"]


def test_invalid_yaml_and_non_mapping_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(Path("configs/demo.yaml"), ["train.steps=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_every_shipped_config_loads():
    from mmpretrain.benchmark.suite import load_suite
    from mmpretrain.curate.config import load_curate_config

    for path in sorted(Path("configs").rglob("*.yaml")):
        if "suites" in path.parts:  # benchmark suites, not run configs
            assert load_suite(path).tasks
        elif "curation" in path.parts:  # `mmpretrain curate` configs
            assert load_curate_config(path).stages
        elif "deepspeed" not in path.parts:
            load_config(path)


@pytest.mark.parametrize("overrides, message", [
    (["data.batch_size=1"], r"data.batch_size: invalid value 1 \(expected > 1"),
    (["data.num_workers=-1"], "data.num_workers: invalid value -1"),
    (["data.shuffle_buffer=-5"], "data.shuffle_buffer: invalid value -5"),
    (["data.positives_per_sample=0"], "data.positives_per_sample: invalid value 0"),
    (["data.max_skip_fraction=1.5"], r"data.max_skip_fraction must be in \[0, 1\]"),
    (["data.limits.min_side=0"], "data.limits: max_member_bytes, max_pixels and min_side must be >= 1"),
    (["data.augment.scale=[0.5]"], "data.augment.scale must be"),
    (["data.train=[a]", "data.sources=[{name: b, shards: [b]}]"], "data.train and data.sources are both set"),
    (["data.sources=[{name: b, shards: [b]}, {name: b, shards: [c]}]"], "names must be unique"),
    (["data.sources=[{name: b, shards: [b], weight: 0}]"], "source 'b' needs a weight > 0"),
    (["data.train=['pipe:cat x.tar']"], "refusing shard URL"),
    (["run_name=''"], "run_name: invalid value ''"),
    (["run_name=.."], "run_name: invalid value '..'"),
    (["run_name=a/b"], "run_name: invalid value 'a/b'"),
    (["train.steps=0"], "train.steps: invalid value 0"),
    (["train.accum_steps=0"], "train.accum_steps: invalid value 0"),
    (["train.checkpoint_every=-1"], "train.checkpoint_every: invalid value -1"),
    (["train.keep_checkpoints=0"], r"train.keep_checkpoints: invalid value 0 \(expected >= 1\)"),
    (["model.name=no-such-model"], "model.name: unknown model 'no-such-model'"),
    (["model.max_logit_scale=0"], "model.max_logit_scale: invalid value 0"),
    (["engine.name=deepspeed", "engine.deepspeed_config=''"], "engine.deepspeed_config is empty"),
    (["logging.wandb=true", "logging.wandb_project=''"], "logging.wandb_project is empty"),
    (["eval.every_steps=-1"], "eval.every_steps: invalid value -1"),
    (["eval.batch_size=0"], "eval.batch_size: invalid value 0"),
    (["eval.tasks=[{name: d, kind: retrieval, data: x, max_samples: 0}]"], r"eval task 0 \('d'\): max_samples"),
    (["eval.tasks=[{name: d, kind: retrieval, data: x}, {name: d, kind: retrieval, data: y}]"],
     r"eval task 1 \('d'\): another retrieval task has the same name"),
    (["loss.chunk_size=0"], "loss.chunk_size must be a positive integer or None, got 0"),
    (["optim.lr=0"], "optim.lr: invalid value 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay: invalid value -0.1"),
    (["optim.betas=[0.9]"], r"optim.betas: two values in \[0, 1\) expected, got \[0.9\]"),
    (["optim.betas=[0.9, 1.5]"], "optim.betas: two values"),
    (["optim.eps=0"], "optim.eps: invalid value 0"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps: invalid value -1"),
    (["optim.min_lr_ratio=1.5"], r"optim.min_lr_ratio: invalid value 1.5 \(expected in \[0, 1\]\)"),
    (["optim.min_lr_ratio=-0.1"], "optim.min_lr_ratio: invalid value -0.1"),
    (["optim.grad_clip=-1"], "optim.grad_clip: invalid value -1"),
])
def test_each_section_checks_its_values_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert str(info.value).startswith("config + overrides: ") and "\n" not in str(info.value)


def test_rules_that_span_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"sigmoid loss \(loss.name=siglip\) needs the learnable bias"):
        load_config(None, ["loss.name=siglip"])
    load_config(None, ["loss.name=siglip", "model.init_logit_bias=-10"])
    with pytest.raises(ConfigError, match="engine.offload_optimizer needs engine.name=deepspeed"):
        load_config(None, ["engine.offload_optimizer=true"])
    with pytest.raises(ConfigError, match=r"run.yaml: engine.offload_optimizer needs DeepSpeed.s CPU AdamW.*optim.impl=auto"):
        load_config(write(tmp_path, "engine: {name: deepspeed, offload_optimizer: true}\noptim: {impl: torch}\n"))


def test_every_section_validates_itself():
    """RunConfig.validate walks the sections; each has its own validate() (none is skipped)."""
    from dataclasses import fields, is_dataclass

    config = RunConfig()
    sections = [getattr(config, f.name) for f in fields(config) if is_dataclass(getattr(config, f.name))]
    assert len(sections) == 8 and all(callable(getattr(s, "validate", None)) for s in sections)
    config.validate()


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError, match=r"override .*: not valid YAML at column \d+") as error:
        load_config(None, ["eval.tasks=[{name: d, data: ${data_root}/x}]"])
    assert "\n" not in str(error.value)
