"""A real `mmpretrain train` process, signalled as SLURM does before a time limit, then resumed."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from mmpretrain.engine.checkpoint import list_checkpoints, load_checkpoint
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.engine.preemption import REQUEUE_EXIT_CODE
from tests.conftest import micro_overrides

REPO = Path(__file__).resolve().parents[2]


def test_sigusr1_checkpoints_exits_for_requeue_and_resume_continues(colour_shards, tmp_path):
    overrides = micro_overrides(colour_shards, tmp_path / "runs", steps=100_000) + [
        "eval.tasks=[]", "train.log_every=1"]
    metrics = tmp_path / "runs" / "micro" / "metrics.jsonl"
    command = [sys.executable, "-m", "mmpretrain.cli", "train", "demo", *overrides]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (metrics.exists() and len(read_metrics(metrics)) >= 3):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == REQUEUE_EXIT_CODE, stderr[-2000:]
    assert "preempted by SIGUSR1" in stderr

    checkpoint = list_checkpoints(tmp_path / "runs" / "micro" / "checkpoints")[-1]
    stopped_at = load_checkpoint(checkpoint)["step"]
    assert stopped_at >= 3 and max(r["step"] for r in read_metrics(metrics)) == stopped_at

    # The later train.steps override wins over the one in `command`.
    resumed = subprocess.run([*command, f"train.steps={stopped_at + 2}", "--resume", "latest"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [r["step"] for r in read_metrics(metrics)]
    assert steps[-2:] == [stopped_at + 1, stopped_at + 2]  # continued, not restarted
