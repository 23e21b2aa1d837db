"""Exported checkpoints load in plain open_clip (local-dir and named config + pretrained) with our embeddings."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from mmpretrain.config import config_to_dict, load_config
from mmpretrain.engine.checkpoint import Checkpointer, atomic_save, checkpoint_path
from mmpretrain.engine.export import export_open_clip
from mmpretrain.models.multitower import MultiTower
from mmpretrain.models.towers import ModelConfig, build_model, register_project_configs
from mmpretrain.paths import configs_dir


@pytest.fixture(autouse=True)
def _restore_open_clip_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs registered here (some in tmp_path) must not leak into open_clip's registry for later tests.
    The project's own configs are registered first: towers.py registers them once per process."""
    register_project_configs()
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", list(open_clip.factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", dict(open_clip.factory._MODEL_CONFIGS))


def _trained_run(run_dir: Path, name: str = "mmp-test-micro", bias: float | None = None) -> MultiTower:
    """A run directory with two checkpoints like training writes (the Checkpointer, with the model as the
    engine's state); the newest holds perturbed weights."""
    model = build_model(ModelConfig(name=name, init_logit_bias=bias)).model
    overrides = [f"model.name={name}"] + ([f"model.init_logit_bias={bias}"] if bias is not None else [])
    config = config_to_dict(load_config(None, overrides))
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=2, metadata={"config": config})
    checkpointer.register("engine", _ModelOnly(model))
    checkpointer.save(2)
    torch.manual_seed(0)
    with torch.no_grad():  # move off the fresh init, so a loader that re-initialises cannot pass by luck
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpointer.save(3)
    return model.eval()


class _ModelOnly:
    def __init__(self, model: MultiTower) -> None:
        self.model = model

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


def test_export_reads_checkpoints_of_the_earlier_format(tmp_path: Path) -> None:
    # Format 1 (before the Checkpointer) kept the model at the top level; evaluation and export still read it.
    ours = _trained_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-000000003.pt"
    state = torch.load(path, weights_only=True)
    old = tmp_path / "old" / "checkpoints"
    old.mkdir(parents=True)
    atomic_save({"model": state["engine"]["model"], "step": 3, "config": state["config"]}, checkpoint_path(old, 3))
    out = export_open_clip(tmp_path / "old", tmp_path / "export", formats=("bin",))
    _assert_same_embeddings(ours, open_clip.create_model("local-dir:" + str(out)))


def _assert_same_embeddings(ours: MultiTower, theirs: torch.nn.Module) -> None:
    theirs.eval()
    size = theirs.visual.image_size
    images = torch.randn(3, 3, *((size, size) if isinstance(size, int) else size))
    text = torch.randint(1, 49407, (3, theirs.context_length))
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(images, normalize=True), ours.encode("image", images),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(theirs.encode_text(text, normalize=True), ours.encode("text", text),
                                   atol=1e-6, rtol=0)
    # open_clip stores the scale as a scalar; ours trains as shape [1] (DeepSpeed cannot broadcast 0-dim tensors)
    torch.testing.assert_close(theirs.logit_scale.detach(), ours.logit_scale.detach().reshape(()), atol=0, rtol=0)


def test_export_loads_via_local_dir_and_named_config(tmp_path: Path) -> None:
    ours = _trained_run(tmp_path / "run")
    out = export_open_clip(tmp_path / "run", tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {
        "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"}
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["custom_text"] is True

    local, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(out))
    _assert_same_embeddings(ours, local)
    assert type(local).__name__ == "CustomTextCLIP"
    assert open_clip.get_tokenizer("local-dir:" + str(out))(["a photo"]).shape == (1, 16)

    open_clip.add_model_config(configs_dir() / "models")
    for weights in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        named, _, _ = open_clip.create_model_and_transforms("mmp-test-micro", pretrained=str(out / weights))
        _assert_same_embeddings(ours, named)


def test_export_non_custom_text_config_uses_clip_top_level_text_keys(tmp_path: Path) -> None:
    cfg = json.loads((configs_dir() / "models" / "mmp-test-micro.json").read_text())
    del cfg["custom_text"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mmp-test-export-plain.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")

    ours = _trained_run(tmp_path / "run", name="mmp-test-export-plain")  # our build forces custom text
    out = export_open_clip(tmp_path / "run" / "checkpoints" / "step-000000003.pt", tmp_path / "export",
                           formats=("safetensors",))
    assert "token_embedding.weight" in load_file(out / "open_clip_model.safetensors")

    for loaded in (open_clip.create_model("local-dir:" + str(out)),
                   open_clip.create_model("mmp-test-export-plain",
                                          pretrained=str(out / "open_clip_model.safetensors"))):
        assert type(loaded).__name__ == "CLIP"
        _assert_same_embeddings(ours, loaded)


def test_export_round_trips_logit_bias(tmp_path: Path) -> None:
    ours = _trained_run(tmp_path / "run", bias=-10.0)
    out = export_open_clip(tmp_path / "run", tmp_path / "export", formats=("bin",))
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["init_logit_bias"] == -10.0

    open_clip.add_model_config(configs_dir() / "models")
    for loaded in (open_clip.create_model("local-dir:" + str(out)),
                   open_clip.create_model("mmp-test-micro", pretrained=str(out / "open_clip_pytorch_model.bin"),
                                          init_logit_bias=0.0)):
        _assert_same_embeddings(ours, loaded)
        torch.testing.assert_close(loaded.logit_bias.detach(), ours.logit_bias.detach().reshape(()), atol=0, rtol=0)
        assert ours.logit_bias.item() != -10.0  # the perturbed value came through, not the init


def test_export_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    _trained_run(tmp_path / "run")
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_open_clip(tmp_path / "run", out)
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left behind

    export_open_clip(tmp_path / "run", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "open_clip_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]


def _rewrite(path: Path, state: dict) -> None:
    """Edit a checkpoint by hand, as an older version without manifests would have written it: the manifest of
    the original would (rightly) refuse the edited file."""
    torch.save(state, path)
    path.with_name(path.stem + ".manifest.json").unlink()


def test_export_refuses_a_corrupt_newest_checkpoint_and_takes_the_newest_intact_one(tmp_path: Path, caplog) -> None:
    _trained_run(tmp_path / "run")
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert len(checkpoints) >= 2, checkpoints
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[:1000])  # truncated by a full disk or a kill
    out = export_open_clip(tmp_path / "run", tmp_path / "export", formats=("bin",))
    exported = open_clip.create_model("local-dir:" + str(out))
    intact = torch.load(checkpoints[-2], weights_only=True)["engine"]["model"]["logit_scale"]
    assert torch.equal(exported.logit_scale.detach().reshape(-1), intact.reshape(-1))  # the step before, not a fresh init
    assert "skipped incomplete checkpoint(s)" in caplog.text and checkpoints[-1].name in caplog.text


def test_export_fails_loudly_on_unmatched_keys(tmp_path: Path) -> None:
    _trained_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-000000003.pt"
    state = torch.load(path, weights_only=True)
    state["engine"]["model"]["towers.audio.proj"] = torch.zeros(2)
    _rewrite(path, state)
    with pytest.raises(ValueError, match="towers.audio.proj"):
        export_open_clip(tmp_path / "run", tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)],
                         ids=["umask022", "umask027"])
def test_export_modes_follow_the_umask(tmp_path: Path, umask: int, dir_mode: int, file_mode: int) -> None:
    # Like any other tool's output (not mkdtemp's 0700 and safetensors' 0600), so the group can read the export.
    _trained_run(tmp_path / "run")
    previous = os.umask(umask)
    try:
        out = export_open_clip(tmp_path / "run", tmp_path / "export")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    files = sorted(out.iterdir())
    assert len(files) == 3 and all(stat.S_IMODE(f.stat().st_mode) == file_mode for f in files), files


def test_export_reads_the_model_section_of_config_yaml_when_the_checkpoint_has_none(tmp_path: Path) -> None:
    from mmpretrain.config import save_config
    from mmpretrain.errors import ConfigError

    ours = _trained_run(tmp_path / "run", bias=-10.0)
    path = tmp_path / "run" / "checkpoints" / "step-000000003.pt"
    state = torch.load(path, weights_only=True)
    save_config(load_config(None, ["model.name=mmp-test-micro", "model.init_logit_bias=-10"]),
                tmp_path / "run" / "config.yaml")
    _rewrite(path, {k: v for k, v in state.items() if k != "config"})
    out = export_open_clip(path, tmp_path / "export", formats=("bin",))
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["init_logit_bias"] == -10.0
    _assert_same_embeddings(ours, open_clip.create_model("local-dir:" + str(out)))

    (tmp_path / "run" / "config.yaml").write_text("model: {name: mmp-test-micro, max_logit_scale: big}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: model.max_logit_scale: .*big"):
        export_open_clip(path, tmp_path / "export2")
