"""The Checkpointer: names, atomic writes, manifests, fallback past corrupt checkpoints, a full disk, keep-K,
registered parts, format refusal."""

import errno
import json
import logging
import os

import pytest
import torch

import mmpretrain.engine.checkpoint as checkpoint_module
from mmpretrain.engine.checkpoint import (Checkpointer, atomic_save, checkpoint_path, list_checkpoints,
                                          load_checkpoint, resolve_resume, step_name, verify_checkpoint)
from mmpretrain.errors import ConfigError, StorageError


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


def _saver(directory, keep=3):
    saver = Checkpointer(directory, keep=keep)
    part = Sharded()
    saver.register("engine", part, sharded=True)
    return saver, part


def _saved(directory, steps, keep=3):
    saver, part = _saver(directory, keep)
    for step in steps:
        part.count = step
        saver.save(step)
    return saver


def _restore_latest(directory):
    saver, part = _saver(directory)
    return saver.restore("latest"), part


def test_every_checkpoint_has_a_manifest_of_its_files(tmp_path):
    _saved(tmp_path, [2])
    manifest = json.loads((tmp_path / "step-000000002.manifest.json").read_text())
    assert set(manifest["files"]) == {"step-000000002.pt", "step-000000002/rank0"}
    assert manifest["files"]["step-000000002.pt"]["size"] == (tmp_path / "step-000000002.pt").stat().st_size
    assert verify_checkpoint(tmp_path / "step-000000002.pt") is None


@pytest.mark.parametrize("damage", ["truncate", "zero_bytes", "shard", "no_manifest_truncated"])
def test_latest_falls_back_past_a_corrupt_newest_checkpoint_with_one_warning(tmp_path, caplog, damage):
    _saved(tmp_path, [2, 4])
    newest = tmp_path / "step-000000004.pt"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "zero_bytes":
        newest.write_bytes(b"")
    elif damage == "shard":
        (tmp_path / "step-000000004" / "rank0").write_text("9")  # same size, other content
    else:  # a checkpoint from before manifests is accepted only if it loads
        (tmp_path / "step-000000004.manifest.json").unlink()
        newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="mmpretrain.engine.checkpoint"):
        restored, part = _restore_latest(tmp_path)
    assert restored == (tmp_path / "step-000000002.pt", 2) and part.count == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step-000000004.pt" in warnings[0] and "\n" not in warnings[0]
    assert "resuming from step-000000002.pt" in warnings[0]


def test_a_checkpoint_without_manifest_that_loads_is_accepted(tmp_path):
    _saved(tmp_path, [2, 4])
    (tmp_path / "step-000000004.manifest.json").unlink()
    restored, part = _restore_latest(tmp_path)
    assert restored == (tmp_path / "step-000000004.pt", 4)


def test_an_explicit_corrupt_checkpoint_is_a_one_line_config_error_naming_it(tmp_path):
    _saved(tmp_path, [2])
    path = tmp_path / "step-000000002.pt"
    path.write_bytes(path.read_bytes()[:50])
    saver, _ = _saver(tmp_path)
    with pytest.raises(ConfigError, match="step-000000002.pt") as error:
        saver.restore(str(path))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="no intact checkpoint"):  # nothing to fall back to: not a fresh start
        saver.restore("latest")


@pytest.mark.parametrize("where", ["torch.save", "os.replace", "manifest"])
def test_a_full_disk_names_enospc_leaves_no_temp_file_and_keeps_older_checkpoints(tmp_path, monkeypatch, where):
    saver = _saved(tmp_path, [2, 4], keep=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "torch.save":
        monkeypatch.setattr(torch, "save", full)
    elif where == "os.replace":
        monkeypatch.setattr(os, "replace", full)
    else:
        monkeypatch.setattr(checkpoint_module, "write_manifest", full)
    with pytest.raises(StorageError, match="ENOSPC") as error:
        saver.save(6)
    message = str(error.value)
    assert "\n" not in message and "step-000000006.pt" in message
    monkeypatch.undo()
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # keep-K did not run
    assert not (tmp_path / "step-000000006").exists()
    restored, _ = _restore_latest(tmp_path)
    assert restored == (tmp_path / "step-000000004.pt", 4)


def test_a_full_disk_while_writing_shards_is_reported_the_same_way(tmp_path, monkeypatch):
    saver, part = _saver(tmp_path, keep=1)
    saver.save(2)

    def full(folder):
        folder.mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "rank0"))

    monkeypatch.setattr(part, "save_shards", full)
    with pytest.raises(StorageError, match=r"step-000000004/rank0: ENOSPC"):
        saver.save(4)
    assert not (tmp_path / "step-000000004").exists() and verify_checkpoint(tmp_path / "step-000000002.pt") is None
