"""Errors that used to bury their cause: each is now one line naming the cause and the file or key."""


import pytest
import torch

from mmpretrain.cli import main
from mmpretrain.data.config import DataConfig
from mmpretrain.data.shards import read_shard_sizes
from mmpretrain.engine.local import load_model_state, resolve_device
from mmpretrain.errors import ConfigError
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


@pytest.mark.parametrize("pretrained, expected", [
    ("no-such-tag", "neither a file nor an open_clip pretrained tag of 'mmp-test-micro'"),
    ("missing/weights.pt", "no such file 'missing/weights.pt'"),
])
def test_an_unknown_pretrained_is_one_line_exit_2(tmp_path, colour_shards, capsys, pretrained, expected):
    code = main(["train", "demo", *micro_overrides(colour_shards, tmp_path / "runs"), f"model.pretrained={pretrained}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_a_corrupt_pretrained_file_is_one_line_and_never_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    planted = tmp_path / "planted.pt"
    torch.save({"state_dict": Planted()}, planted)
    with pytest.raises(ConfigError, match="refused it: the file is corrupt or holds pickled objects") as error:
        build_model(ModelConfig(name="mmp-test-micro", pretrained=str(planted)))
    assert "\n" not in str(error.value) and not marker.exists()


def _brace(folder, count):
    return str(folder / ("shard-{000000..%06d}.tar" % (count - 1)))


def test_a_brace_pattern_with_missing_shards_is_refused_or_warned_by_config(tmp_path, caplog):
    write_id_shards(tmp_path / "s", 0, [4, 4, 4])
    (tmp_path / "s" / "shard-000001.tar").unlink()
    config = DataConfig(train=[_brace(tmp_path / "s", 3)], batch_size=2, num_workers=0)
    config.limits.min_side = 1
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 shards named by .* do not exist \(first: .*shard-000001"):
        id_loader(config)
    config.allow_missing_shards = True
    loader = id_loader(config)
    assert [s.rsplit("/", 1)[1] for s in loader.info.shards] == ["shard-000000.tar", "shard-000002.tar"]
    assert "reading the 2 present" in caplog.text


def test_a_batch_larger_than_a_readers_share_of_the_data_is_warned(tmp_path, caplog):
    write_id_shards(tmp_path / "s", 0, [4, 4])
    config = DataConfig(train=[str(tmp_path / "s")], batch_size=6, num_workers=2)
    config.limits.min_side = 1
    id_loader(config)
    assert "data.batch_size=6 is larger than the ~4 samples each of the 2 readers" in caplog.text
    caplog.clear()
    config.batch_size = 4
    id_loader(config)
    assert "batches will repeat samples" not in caplog.text
