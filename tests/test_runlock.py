"""One job per run directory: the lock names its holder, a stale one is taken over, a normal run gives it back."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from mmpretrain.cli import main
from mmpretrain.engine.runlock import RunLock, read_holder
from mmpretrain.errors import ConfigError
from tests.conftest import micro_overrides


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(run_dir, host, pid, started="2026-01-01T00:00:00+0000"):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps({"host": host, "pid": pid, "started": started}))


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        holder = read_holder(tmp_path / "run" / ".lock")
        assert holder == lock.holder and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not (tmp_path / "run" / ".lock").exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temp file left


def test_a_second_job_is_refused_naming_the_holder(colour_shards, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "micro"
    live = os.getppid()  # another process that runs: the "first job"
    _write_lock(run_dir, socket.gethostname(), live)
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=2) + ["eval.tasks=[]"]
    assert main(["train", "demo", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"pid {live}" in err and socket.gethostname() in err
    assert "started 2026-01-01T00:00:00" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing in the run directory changed


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    _write_lock(tmp_path / "run", "other-node-17", 4242)
    with pytest.raises(ConfigError, match=r"other-node-17, pid 4242.*if that job is dead, remove .*\.lock"):
        RunLock(tmp_path / "run").acquire()


def test_a_stale_lock_is_taken_over_with_one_warning(colour_shards, tmp_path, caplog):
    run_dir = tmp_path / "runs" / "micro"
    dead = _dead_pid()
    _write_lock(run_dir, socket.gethostname(), dead)
    with caplog.at_level(logging.WARNING, logger="mmpretrain.engine.runlock"):
        assert main(["train", "demo", *micro_overrides(colour_shards, tmp_path / "runs", steps=2),
                     "eval.tasks=[]"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "mmpretrain.engine.runlock"]
    assert len(warnings) == 1 and f"stale lock of pid {dead}" in warnings[0]
    assert (run_dir / "checkpoints").is_dir()
    holder = read_holder(run_dir / ".lock")
    assert holder is None or holder["pid"] == os.getpid()  # ours until this process ends (or released)


def test_the_lock_is_gone_after_a_normal_run(colour_shards, tmp_path):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=2) + ["eval.tasks=[]"]
    done = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "train", "demo", *overrides],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "micro"
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / ".lock").exists()


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock_from_another_host(tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, "other-node-17", 4242)
    holder = json.loads((run_dir / ".lock").read_text())
    (run_dir / ".lock").write_text(json.dumps({**holder, "slurm": "777.0"}))
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level(logging.WARNING, logger="mmpretrain.engine.runlock"):
        with RunLock(run_dir):
            assert read_holder(run_dir / ".lock")["slurm"] == "777.1"
    assert len(caplog.records) == 1 and "requeued SLURM job (777.0, host other-node-17" in caplog.records[0].getMessage()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same incarnation elsewhere: a live job step, refused
    (run_dir / ".lock").write_text(json.dumps({**holder, "slurm": "777.0"}))
    with pytest.raises(ConfigError, match="other-node-17"):
        RunLock(run_dir).acquire()
