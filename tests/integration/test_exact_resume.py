"""Exact mid-epoch resume: a run killed with SIGKILL and resumed gives the uninterrupted run's losses."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmpretrain.engine.metrics import read_metrics
from tests.conftest import micro_overrides, write_colour_shards

REPO = Path(__file__).resolve().parents[2]


def losses_by_step(metrics: Path) -> dict[int, float]:
    """The last logged loss of every step (a killed run may have logged steps it never checkpointed)."""
    return {r["step"]: r["loss"] for r in read_metrics(metrics) if "loss" in r}


def test_sigkill_then_resume_repeats_the_uninterrupted_losses(tmp_path):
    shards = tmp_path / "shards"
    write_colour_shards(shards, n_shards=4, per_shard=8)
    # Two workers (their batches alternate), batches of 3 that straddle passes, a small shuffle buffer, a
    # constant learning rate after warmup so the total step count does not change the schedule.
    common = micro_overrides(shards, tmp_path / "runs", steps=8) + [
        "eval.tasks=[]", "train.log_every=1", "data.num_workers=2", "data.batch_size=3", "data.shuffle_buffer=5",
        "optim.min_lr_ratio=1.0", "train.keep_checkpoints=100"]
    command = [sys.executable, "-m", "mmpretrain.cli", "train", "demo", *common]

    whole = subprocess.run([*command, "run_name=whole"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = losses_by_step(tmp_path / "runs" / "whole" / "metrics.jsonl")
    assert sorted(expected) == list(range(1, 9))

    # The same run, told to go on for long, killed without warning once step 3 is checkpointed.
    run_dir = tmp_path / "runs" / "killed"
    checkpoint = run_dir / "checkpoints" / "step-000000003.pt"
    victim = subprocess.Popen([*command, "run_name=killed", "train.steps=100000", "train.checkpoint_every=3"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not checkpoint.exists():
        assert victim.poll() is None and time.time() < deadline, victim.communicate()[1][-2000:]
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)

    resumed = subprocess.run([*command, "run_name=killed", "--resume", str(checkpoint)], cwd=REPO,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = losses_by_step(run_dir / "metrics.jsonl")
    steps = list(range(4, 9))
    torch.testing.assert_close(torch.tensor([got[s] for s in steps]), torch.tensor([expected[s] for s in steps]),
                               rtol=1e-6, atol=1e-6)
