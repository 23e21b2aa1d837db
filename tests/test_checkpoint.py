"""The Checkpointer: names, atomic writes, keep-K, registered parts, format refusal."""

import pytest
import torch

from mmpretrain.engine.checkpoint import (Checkpointer, atomic_save, checkpoint_path, list_checkpoints,
                                          load_checkpoint, resolve_resume, step_name)
from mmpretrain.errors import ConfigError


class Counter:
    """A stateful part: a tensor and a count."""

    def __init__(self, value: float = 0.0) -> None:
        self.weight, self.count = torch.full((2,), value), 0

    def state_dict(self):
        return {"weight": self.weight.clone(), "count": self.count}

    def load_state_dict(self, state):
        self.weight, self.count = state["weight"].clone(), int(state["count"])


class Sharded(Counter):
    """A part that also writes a per-rank file, as DeepSpeed's engine does."""

    def save_shards(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rank0").write_text(str(self.count))

    def load_shards(self, folder):
        self.count = int((folder / "rank0").read_text())


class PerRank(Counter):
    """A per-rank part gets every rank's state back, in rank order (the train loader re-deals them)."""

    def load_state_dict(self, states):
        assert isinstance(states, list)
        super().load_state_dict(states[0])


def test_parts_are_saved_and_restored_under_their_names(tmp_path):
    engine, data = Sharded(1.0), PerRank(2.0)
    engine.count, data.count = 7, 3
    saver = Checkpointer(tmp_path, keep=2, metadata={"config": {"a": 1}})
    saver.register("engine", engine, sharded=True)
    saver.register("data", data, per_rank=True)
    path = saver.save(5)
    assert path == tmp_path / "step-000000005.pt" == checkpoint_path(tmp_path, 5) and step_name(5) in path.name
    state = load_checkpoint(path)
    assert state["format"] == 2 and state["step"] == 5 and state["config"] == {"a": 1}
    assert state["data"][0]["count"] == 3  # per-rank parts: a list in rank order

    engine2, data2 = Sharded(), PerRank()
    loader = Checkpointer(tmp_path, keep=2)
    loader.register("engine", engine2, sharded=True)
    loader.register("data", data2, per_rank=True)
    restored = loader.restore("latest")
    assert restored == (path, 5)
    assert torch.equal(engine2.weight, engine.weight) and engine2.count == 7  # from the shard folder
    assert torch.equal(data2.weight, data.weight) and data2.count == 3


def test_keep_k_prunes_checkpoints_with_their_shard_folders_and_ignores_partial_files(tmp_path):
    saver = Checkpointer(tmp_path, keep=2)
    saver.register("engine", Sharded(), sharded=True)
    for step in (10, 20, 30):
        saver.save(step)
    (tmp_path / "step-000000040.pt.tmp-123").write_bytes(b"partial")  # an interrupted save
    (tmp_path / "step-000000015").mkdir()  # shards of a save that never completed
    saver.save(50)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000030.pt", "step-000000050.pt"]
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["step-000000030", "step-000000050"]
    assert resolve_resume(tmp_path, "latest") == tmp_path / "step-000000050.pt"
    assert resolve_resume(tmp_path, str(tmp_path / "step-000000030")) == tmp_path / "step-000000030.pt"


def test_resume_latest_without_checkpoints_is_none_and_bad_path_errors(tmp_path):
    assert resolve_resume(tmp_path / "nothing", "latest") is None
    saver = Checkpointer(tmp_path / "nothing", keep=1)
    assert saver.restore("latest") is None
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resolve_resume(tmp_path, str(tmp_path / "missing.pt"))


def test_a_checkpoint_of_the_earlier_format_is_refused_in_one_line(tmp_path):
    # Format 1 (before the Checkpointer): engine state at the top level, replayed data positions.
    atomic_save({"model": {}, "optimizer": {}, "scheduler": {}, "step": 3, "data": [{"position": {}}]},
                tmp_path / "step-000000003.pt")
    saver = Checkpointer(tmp_path, keep=1)
    saver.register("engine", Counter())
    with pytest.raises(ConfigError, match="checkpoint format 1, this version resumes format 2") as error:
        saver.restore("latest")
    assert "\n" not in str(error.value)


def test_part_names_cannot_collide(tmp_path):
    saver = Checkpointer(tmp_path, keep=1, metadata={"config": {}})
    saver.register("engine", Counter())
    for name in ("engine", "step", "format", "config"):
        with pytest.raises(ValueError, match="taken"):
            saver.register(name, Counter())


def test_the_local_engine_refuses_a_deepspeed_checkpoint_in_one_line():
    from mmpretrain.engine.local import LocalEngine

    engine = LocalEngine.__new__(LocalEngine)  # only load_state_dict is exercised
    with pytest.raises(ConfigError, match="resume it with engine.name=deepspeed"):
        engine.load_state_dict({"model": {}})


def test_saving_a_step_again_leaves_no_stale_shard_file(tmp_path):
    saver = Checkpointer(tmp_path, keep=2)
    saver.register("engine", Sharded(), sharded=True)
    (tmp_path / "step-000000004").mkdir(parents=True)
    (tmp_path / "step-000000004" / "zero_pp_rank_3_mp_rank_00_optim_states.pt").write_bytes(b"stale")
    saver.save(4)
    assert sorted(p.name for p in (tmp_path / "step-000000004").iterdir()) == ["rank0"]
