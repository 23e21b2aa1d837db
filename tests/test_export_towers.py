"""Models open_clip cannot hold (an audio tower, three towers) export in mmpretrain's format: every tower to
safetensors plus a config that rebuilds them; `mmpretrain eval EXPORT_DIR` evaluates such an export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmpretrain.cli import main
from mmpretrain.config import config_to_dict, load_config
from mmpretrain.engine.checkpoint import Checkpointer
from mmpretrain.engine.export import export_model, export_open_clip
from mmpretrain.engine.export_mmpretrain import CONFIG_NAME, WEIGHTS_NAME, load_export
from mmpretrain.errors import ConfigError
from mmpretrain.eval.harness import run_eval
from mmpretrain.models import build_model
from mmpretrain.models.multitower import MultiTower
from tests.conftest import audio_overrides, write_colour_shards
from tests.test_export import _ModelOnly

THREE_TOWERS = ["model.name=mmp-test-micro", "model.towers=[image,text,audio]", "model.init_logit_bias=-10",
                *audio_overrides()]
ZEROSHOT = ("eval.tasks=[{name: colours, kind: zeroshot, data: DATA, label_key: label, "
            "classnames: [red, green, blue], templates: ['a {} square']}]")


def _run(run_dir: Path, overrides: list[str], edit=None):
    """A run directory with one checkpoint written as training writes it (the Checkpointer, the run config as
    metadata), holding weights moved off the fresh init so that a loader that re-initialises cannot pass."""
    config = load_config(None, overrides)
    torch.manual_seed(0)
    built = build_model(config.model, config.loss.name)
    with torch.no_grad():
        for p in built.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    saved = config_to_dict(config)
    if edit is not None:
        edit(saved)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=2, metadata={"config": saved})
    checkpointer.register("engine", _ModelOnly(built.model))
    checkpointer.save(7)
    return built


def _inputs(built, n: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 32, 32, generator=generator),
            "text": built.tokenizer([f"caption {i}" for i in range(n)]),
            "audio": (torch.randn(n, 4000, generator=generator) * 3000).to(torch.int16)}


def _assert_same_model(ours: MultiTower, theirs: MultiTower, inputs: dict[str, torch.Tensor]) -> None:
    ours.eval(), theirs.eval()
    with torch.no_grad():
        for tower in ours.modalities:
            torch.testing.assert_close(theirs.encode(tower, inputs[tower]), ours.encode(tower, inputs[tower]),
                                       atol=0, rtol=0)
        for pair in ours.pairs:
            for mine, other in zip(ours.head(pair), theirs.head(pair)):
                assert (mine is None) == (other is None)
                if mine is not None:
                    assert torch.equal(mine, other), pair.key


@pytest.fixture
def three_tower_run(tmp_path: Path):
    def relative_audio_weights(saved: dict) -> None:
        # The weights the audio tower started from, named relative to where training ran: not needed to reload.
        saved["model"]["audio"]["pretrained"] = "weights/ast-start.safetensors"
    return tmp_path / "run", _run(tmp_path / "run", THREE_TOWERS, edit=relative_audio_weights)


def test_a_three_tower_model_exports_every_tower_and_reloads_with_identical_embeddings(three_tower_run, tmp_path):
    run_dir, ours = three_tower_run
    out, layout = export_model(run_dir, tmp_path / "export")
    assert layout == "mmpretrain"
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]  # no temp folder left

    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["format"] == 1 and config["loss_name"] == "clip"
    assert config["model"]["towers"] == ["image", "text", "audio"]
    assert config["model"]["pretrained"] is None and config["model"]["audio"]["pretrained"] is None
    assert config["source"] == {"checkpoint": str((run_dir / "checkpoints" / "step-000000007.pt").resolve()),
                                "step": 7}
    assert config["preprocess"] == json.loads(json.dumps(ours.preprocess))
    state = load_file(out / WEIGHTS_NAME)
    assert state.keys() == ours.model.state_dict().keys()
    assert any(k.startswith("towers.audio.") for k in state) and "pair_scales.audio_text" in state

    loaded = load_export(out).built
    _assert_same_model(ours.model, loaded.model, _inputs(ours))
    assert loaded.preprocess == config["preprocess"]


def test_eval_of_an_export_directory_runs_the_tasks_given_as_overrides(three_tower_run, tmp_path, capsys):
    run_dir, ours = three_tower_run
    out, _ = export_model(run_dir, tmp_path / "export")
    shards = tmp_path / "colours"
    write_colour_shards(shards, n_shards=1, per_shard=6)
    task = ZEROSHOT.replace("DATA", str(shards))
    assert main(["eval", str(out), task, "train.progress=false", "train.device=cpu"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert {"zeroshot/colours/top1", "zeroshot/colours/top5"} <= set(results), results
    # The same numbers as the trained model itself gives
    direct = run_eval(ours.model.eval(), ours.eval_transform, ours.tokenizer, load_config(None, [task]).eval,
                      device=torch.device("cpu"), progress=False)
    assert results == pytest.approx(direct, abs=1e-6)
    record = (out / "eval_config.yaml").read_text()
    assert "step-000000007.pt" in record and "colours" in record

    # Never overwritten without --overwrite; --out elsewhere; tasks from --config
    assert main(["eval", str(out), task]) == 2
    assert "--overwrite" in capsys.readouterr().err
    config = tmp_path / "eval.yaml"
    config.write_text("train: {device: cpu, progress: false}\n" + task.replace("eval.tasks=", "eval: {tasks: ") + "}\n")
    assert main(["eval", str(out), "--config", str(config), "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text()) == results


@pytest.mark.parametrize("argv_tail, message", [
    ([], "no eval tasks for the export"),
    (["model.name=ViT-B-32"], "model.name cannot change it"),
    (["--random-init"], "no --checkpoint or --random-init"),
])
def test_eval_of_an_export_refuses_in_one_line(three_tower_run, tmp_path, capsys, argv_tail, message):
    run_dir, _ = three_tower_run
    out, _ = export_model(run_dir, tmp_path / "export")
    capsys.readouterr()
    assert main(["eval", str(out), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "eval_results.json").exists()


def test_open_clip_format_is_refused_for_a_three_tower_model_in_one_line(three_tower_run, tmp_path, capsys):
    run_dir, _ = three_tower_run
    with pytest.raises(ConfigError, match=r"open_clip's format cannot hold this model \(its towers are "):
        export_open_clip(run_dir, tmp_path / "export")
    capsys.readouterr()
    assert main(["export", str(run_dir), str(tmp_path / "export"), "--format", "open_clip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format mmpretrain" in err and "'audio'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_audio_text_model_exports_in_mmpretrain_format_by_default(tmp_path, capsys):
    # No image tower: open_clip's format cannot hold it either (and no image-text head)
    ours = _run(tmp_path / "run", ["model.name=mmp-test-micro", "model.towers=[audio,text]",
                                   "loss.name=siglip", *audio_overrides()])
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    assert "mmpretrain eval" in capsys.readouterr().out
    loaded = load_export(tmp_path / "export")
    assert loaded.config["loss_name"] == "siglip"
    assert "pair_biases.audio_text" in loaded.built.model.state_dict()
    _assert_same_model(ours.model, loaded.built.model, _inputs(ours))


def test_an_image_text_model_exports_to_open_clip_by_default_and_to_mmpretrain_when_asked(tmp_path, capsys):
    ours = _run(tmp_path / "run", ["model.name=mmp-test-micro"])
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "oc")]) == 0
    assert sorted(p.name for p in (tmp_path / "oc").iterdir()) == [
        "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "mmp"), "--format", "mmpretrain"]) == 0
    _assert_same_model(ours.model, load_export(tmp_path / "mmp").built.model, _inputs(ours))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "x"), "--format", "mmpretrain",
                 "--format", "bin"]) == 2
    assert "safetensors only" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    ("missing", "mmpretrain_model.safetensors: missing"),
    ("truncated", "truncated or replaced"),
    ("flipped", "sha256"),
    ("unhashed-truncated", "cannot be read as safetensors"),
    ("bad-json", "not valid JSON"),
])
def test_a_damaged_export_is_a_one_line_error(three_tower_run, tmp_path, capsys, damage, message):
    run_dir, _ = three_tower_run
    out, _ = export_model(run_dir, tmp_path / "export")
    weights, config_file = out / WEIGHTS_NAME, out / CONFIG_NAME
    data = weights.read_bytes()
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(data[:len(data) // 2])
    elif damage == "flipped":  # same size, one byte of tensor data changed: only the hash can tell
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "unhashed-truncated":  # an export whose config records no hash: safetensors' own check
        config = json.loads(config_file.read_text())
        del config["weights"]
        config_file.write_text(json.dumps(config))
        weights.write_bytes(data[:100])
    else:
        config_file.write_text(config_file.read_text()[:-20])
    shards = tmp_path / "colours"
    write_colour_shards(shards, n_shards=1, per_shard=3)
    capsys.readouterr()
    assert main(["eval", str(out), ZEROSHOT.replace("DATA", str(shards)), "train.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("mmpretrain eval: error: "), err
    assert not (out / "eval_results.json").exists()


def test_a_checkpoint_whose_keys_do_not_fit_its_model_is_refused_before_writing(three_tower_run, tmp_path):
    run_dir, _ = three_tower_run
    path = run_dir / "checkpoints" / "step-000000007.pt"
    state = torch.load(path, weights_only=True)
    del state["engine"]["model"]["pair_scales.audio_text"]
    torch.save(state, path)
    path.with_name(path.stem + ".manifest.json").unlink()
    with pytest.raises(ConfigError, match=r"missing keys \['pair_scales.audio_text'\]"):
        export_model(run_dir, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_eval_of_a_folder_that_is_neither_a_run_nor_an_export_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty"), "eval.batch_size=2"]) == 2
    assert "neither a run directory" in capsys.readouterr().err
