"""`mmpretrain doctor`: a run directory's state in a few lines."""

import json

import yaml

from mmpretrain.cli import main
from mmpretrain.doctor import diagnose, skip_lines
from mmpretrain.engine.checkpoint import atomic_save, checkpoint_path

CONFIG = {"run_name": "r", "model": {"name": "m"}, "optim": {"lr": 0.001}, "train": {"steps": 10}}


def _skips(delivered, by_reason, by_shard):
    return {"skips": {"delivered": delivered, "by_reason": by_reason, "by_shard": by_shard}}


def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    data = [_skips(100, {"decode": 2}, {"/d/s0.tar": 2}), _skips(90, {"decode": 1, "too_large": 4},
                                                                    {"/d/s1.tar": 5})]
    for step in (2, 4):
        atomic_save({"format": 2, "step": step, "config": CONFIG, "engine": {}, "data": data},
                    checkpoint_path(run_dir / "checkpoints", step))
    checkpoint_path(run_dir / "checkpoints", 6).write_bytes(b"not a checkpoint")  # corrupt
    (run_dir / "checkpoints" / "step-000000008").mkdir()  # a DeepSpeed save cut before its .pt
    changed = {**CONFIG, "optim": {"lr": 0.0002}, "train": {"steps": 20}}
    (run_dir / "config.4.yaml").write_text(yaml.safe_dump(changed))
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"step": 3, "loss": 2.5}) + "\n" + json.dumps({"step": 4, "loss": 2.25}) + "\n"
        + json.dumps({"step": 4, "eval/x": 0.5}) + "\n" + '{"step": 5, "lo')
    return run_dir


def test_doctor_reports_checkpoints_config_lock_skips_metrics_results(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / ".lock").write_text(json.dumps({"host": "node1", "pid": 42, "start": "2026-01-01T00:00:00"}))
    lines = diagnose(run_dir)
    text = "\n".join(lines)
    assert len(lines) < 15
    assert "last complete step 4" in text and "step-000000004.pt" in text
    assert "skipped: step-000000006.pt does not load" in text
    assert "incomplete: step-000000008/" in text
    assert "config history: config.4.yaml" in text
    assert "checkpoint -> config.4.yaml differ: optim.lr: 0.001 -> 0.0002; train.steps: 10 -> 20" in text
    assert "lock: held (host=node1, pid=42, start=2026-01-01T00:00:00)" in text
    assert "skips: 7 skipped, 190 delivered over 2 rank(s) (too_large: 4, decode: 3)" in text
    assert "worst shards: s1.tar: 5, s0.tar: 2" in text
    assert "metrics: last logged step 4, loss 2.2500" in text
    assert "results.json: absent" in text


def test_doctor_without_newer_config_or_lock(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / "config.4.yaml").unlink()
    (run_dir / "results.json").write_text("{}")
    text = "\n".join(diagnose(run_dir))
    assert "config: config.yaml matches the checkpoint's" in text
    assert "lock: none" in text and "results.json: present" in text


def test_skip_lines_without_data_state():
    assert skip_lines(None) == ["skips: no data state in the checkpoint"]
    assert skip_lines({"data": [_skips(5, {}, {})]}) == ["skips: 0 skipped, 5 delivered over 1 rank(s)"]


def test_doctor_cli_exit_codes(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    assert main(["doctor", str(run_dir)]) == 0
    assert "last complete step 4" in capsys.readouterr().out
    assert main(["doctor", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a run directory" in err
