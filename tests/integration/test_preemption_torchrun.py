"""The requeue cycle as a SLURM user runs it: `mmpretrain launch local` (torchrun) with 2 processes and 2 data
workers each, signalled with SIGUSR1, checkpoints whole, is relaunched with the same command and continues with the
uninterrupted run's losses.

torchrun signals each rank's whole process group, so the DataLoader workers get the signal too; before they
ignored it, they died of it and took their rank down before the preemption checkpoint was written."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmpretrain.engine.checkpoint import list_checkpoints, load_checkpoint
from mmpretrain.engine.metrics import read_metrics
from tests.conftest import micro_overrides, write_colour_shards

REPO = Path(__file__).resolve().parents[2]


def _launch(tmp_path: Path, run_name: str, steps: int, *extra: str) -> list[str]:
    overrides = micro_overrides(tmp_path / "shards", tmp_path / "runs", steps=steps) + [
        "eval.tasks=[]", "train.log_every=1", "data.num_workers=2", "data.batch_size=3", "data.shuffle_buffer=5",
        "engine.name=deepspeed", "engine.deepspeed_config=zero2", "optim.min_lr_ratio=1.0", f"run_name={run_name}"]
    return [sys.executable, "-m", "mmpretrain.cli", "launch", "local", "demo", "--nproc", "2", *overrides, *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_sigusr1_to_the_launcher_checkpoints_every_rank_and_the_relaunch_continues_exactly(tmp_path):
    write_colour_shards(tmp_path / "shards", n_shards=4, per_shard=8)  # 2 ranks x 2 workers = 4 readers
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions"), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "runs" / "preempted"
    command = _launch(tmp_path, "preempted", 10)
    launcher = subprocess.Popen([*command, "train.steps=100000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    # The uninterrupted reference runs alongside (the test's time is mostly process start-up, not training)
    whole_log = (tmp_path / "whole.log").open("w")  # a file, not a pipe nobody reads while waiting: no deadlock
    whole = subprocess.Popen(_launch(tmp_path, "whole", 10), cwd=REPO, env=env, stdout=whole_log, stderr=whole_log)
    deadline = time.time() + 120
    while not ((run_dir / "metrics.jsonl").exists() and len(_losses(run_dir)) >= 3):
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.1)
    launcher.send_signal(signal.SIGUSR1)  # as SLURM's --signal=USR1@T does to the job step
    _, stderr = launcher.communicate(timeout=120)
    # torchrun reports a child's exit 124 as 1; the requeue decision reads the trainer's line (launch/README.md).
    assert launcher.returncode != 0 and "mmpretrain train: preempted" in stderr, stderr[-3000:]
    assert "DataLoader worker" not in stderr and "killed by signal" not in stderr
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    stopped_at = load_checkpoint(checkpoint)["step"]
    shards = sorted(p.name for p in checkpoint.with_suffix("").glob("*optim_states.pt"))
    assert len(shards) == 2  # written whole: every rank's optimizer partition
    assert 3 <= stopped_at < 10

    assert whole.wait(timeout=180) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    expected = _losses(tmp_path / "runs" / "whole")
    resumed = subprocess.run([*command, "--resume", "latest"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _losses(run_dir)
    steps = list(range(stopped_at + 1, 11))
    torch.testing.assert_close(torch.tensor([got[s] for s in steps]), torch.tensor([expected[s] for s in steps]),
                               rtol=1e-6, atol=1e-6)
