import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mmpretrain.cli import UsageError, main, parse_args
from mmpretrain.demo import DEMO_TARGETS
from tests.conftest import micro_overrides
from tests.test_train import eval_overrides


def test_bad_override_exits_2_with_one_line_error(capsys):
    assert main(["train", "configs/demo.yaml", "train.stepz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "override 'train.stepz=1'" in err and "'steps'" in err  # names the source and suggests a fix


def test_missing_config_and_missing_data_are_clear_errors(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["train", "configs/demo.yaml", f"data_root={tmp_path}"]) == 2
    assert "eval task 'digits'" in capsys.readouterr().err  # caught before training starts


def test_the_deepspeed_launchers_local_rank_flag_is_accepted(capsys):
    # `deepspeed script.py ...` runs `script.py --local_rank=N ...`; a bad override after it still fails as usual.
    assert main(["--local_rank=1", "train", "configs/demo.yaml", "train.stepz=1"]) == 2
    assert "override 'train.stepz=1'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, overrides", [
    (["train", "demo", "--resume", "latest", "a=1"], ["a=1"]),
    (["train", "demo", "a=1", "--overwrite", "b.c=2", "--resume", "latest", "a=3"], ["a=1", "b.c=2", "a=3"]),
    (["eval", "runs/x", "--checkpoint", "c.pt", "--out", "o.json", "eval.batch_size=8"], ["eval.batch_size=8"]),
    (["demo", "--data-root", "d", "train.steps=5", "--output-dir", "o", "x=[1, 2]"], ["train.steps=5", "x=[1, 2]"]),
])
def test_overrides_are_taken_anywhere_after_the_config(argv, overrides):
    args = parse_args(argv)
    assert args.overrides == overrides  # in command-line order: a later override of the same key wins
    assert args.command != "train" or args.resume == "latest"


def test_an_override_after_an_option_reaches_the_config(capsys):
    assert main(["train", "configs/demo.yaml", "--resume", "latest", "train.stepz=1"]) == 2
    assert "override 'train.stepz=1'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "demo", "--resume", "latest", "--bogus"], "unrecognized argument '--bogus'"),
    (["train", "demo", "--overwrite", "stray"], "unrecognized argument 'stray'"),
    (["eval", "runs/x", "--out", "o.json", "--out2=p"], "unrecognized argument '--out2=p'"),
    (["export", "runs/x", "out", "a=1"], "takes no config overrides"),
])
def test_anything_else_after_the_config_is_a_one_line_error(argv, message, capsys):
    with pytest.raises(UsageError, match=message):
        parse_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith(f"mmpretrain {argv[0]}: error:")


def test_train_then_eval_a_run_directory(colour_shards, tmp_path, capsys):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=2) + eval_overrides(colour_shards)
    assert main(["train", "demo", *overrides]) == 0
    run_dir = tmp_path / "runs" / "micro"
    assert (run_dir / "results.json").is_file()
    assert main(["eval", str(run_dir)]) == 0
    evaluated = json.loads((run_dir / "eval_results.json").read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    # Evaluating the saved checkpoint reproduces the end-of-training evaluation.
    assert evaluated.keys() == trained.keys()
    for key in trained:
        assert abs(evaluated[key] - trained[key]) < 1e-6, key
    assert "zeroshot/colours/top1" in capsys.readouterr().out
    # Options first, an override after them: it is applied (the task is renamed), the numbers stay.
    checkpoint = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    out = tmp_path / "again.json"
    assert main(["eval", str(run_dir), "--checkpoint", str(checkpoint), "--out", str(out),
                 "eval.tasks[0].name=again"]) == 0
    again = json.loads(out.read_text())
    assert "zeroshot/again/top1" in again
    assert {key.replace("/again/", "/colours/"): value for key, value in again.items()} == evaluated


def test_console_entry_point_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and all(command in done.stdout for command in ("train", "demo", "write-shards"))


def test_export_command_writes_an_open_clip_checkpoint(colour_shards, tmp_path, capsys):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=2) + ["eval.tasks=[]"]
    assert main(["train", "demo", *overrides]) == 0
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "runs" / "micro"), str(out), "--format", "safetensors"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert main(["export", str(tmp_path / "runs" / "micro"), str(out)]) == 2  # refuses to overwrite
    assert "overwrite" in capsys.readouterr().err


def test_launch_is_dispatched_to_the_launchers(tmp_path, capsys):
    code = main(["launch", "slurm", "demo", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "engine.name=deepspeed",
                 f"output_dir={tmp_path}", f"data_root={tmp_path}"])
    assert code == 0
    assert (tmp_path / "demo" / "submit.sbatch").is_file()


@pytest.mark.parametrize("results, code", [({key: 1.0 for key in DEMO_TARGETS}, 0), ({}, 1)])
def test_demo_generates_the_data_trains_and_checks_the_targets(monkeypatch, tmp_path, capsys, results, code):
    import mmpretrain.data.demo_data
    import mmpretrain.train

    calls = []
    monkeypatch.setattr(mmpretrain.data.demo_data, "generate_demo_data", lambda root: calls.append(("data", root)))

    def fake_train(config, overwrite):
        calls.append(("train", config.data_root, config.output_dir, config.train.steps, overwrite))
        return SimpleNamespace(results=results, run_dir=tmp_path / "runs" / "demo")

    monkeypatch.setattr(mmpretrain.train, "train", fake_train)
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    assert main(["demo", "--data-root", data, "train.steps=3", "--output-dir", runs]) == code
    assert calls == [("data", data), ("train", data, runs, 3, True)]
    assert ("MISSED" in capsys.readouterr().out) == bool(code)
