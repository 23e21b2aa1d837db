"""Errors that used to bury their cause: each is now one line naming the cause and the file or key."""

import json

import pytest
import torch

from mmpretrain.cli import main
from mmpretrain.data.config import DataConfig
from mmpretrain.data.shards import read_shard_sizes
from mmpretrain.engine.local import load_model_state, resolve_device
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.models import ModelConfig, build_model
from tests.conftest import id_loader, micro_overrides, write_id_shards


def test_a_malformed_sizes_json_names_the_file(tmp_path):
    write_id_shards(tmp_path / "s", 0, [2])
    (tmp_path / "s" / "sizes.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"sizes.json: not valid JSON"):
        read_shard_sizes([str(tmp_path / "s" / "shard-000000.tar")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_a_checkpoint_of_another_model_is_one_line():
    small = build_model(ModelConfig(name="mmp-test-micro")).model
    other = build_model(ModelConfig(name="mmp-tiny-rn")).model
    with pytest.raises(ConfigError, match="another model") as error:
        load_model_state(small, other.state_dict())
    assert "\n" not in str(error.value)


def test_an_unwritable_output_directory_is_one_line_exit_2(tmp_path, colour_shards, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        import os
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        code = main(["train", "demo", *micro_overrides(colour_shards, locked / "runs")])
    finally:
        locked.chmod(0o700)
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
