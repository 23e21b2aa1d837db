"""bench/train_throughput.py's bookkeeping (the benchmark itself is a script, not a test): both trainers get the
same settings, and both logs are read into the same timed windows."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)

# open_clip_train's own log lines (train.py's format), 128 samples a step, logged every 5 steps
OPEN_CLIP_LOG = """\
2026-11-25,15:36:55 | INFO | Start epoch 0
2026-11-25,15:36:55 | INFO | Train Epoch: 0 [ 128/5120 (2%)] Data (t): 0.685 Batch (t): 1.573, 81.3748/s, 81.3748/s/gpu LR: 0.000125 Loss: 5.1985
2026-11-25,15:36:56 | INFO | Train Epoch: 0 [ 768/5120 (15%)] Data (t): 0.007 Batch (t): 0.328, 400.408/s, 400.408/s/gpu LR: 0.000375 Loss: 4.9789
2026-11-25,15:36:56 | INFO | Train Epoch: 0 [1408/5120 (28%)] Data (t): 0.010 Batch (t): 0.400, 320.000/s, 320.000/s/gpu LR: 0.000500 Loss: 4.8803
2026-11-25,15:36:57 | INFO | Train Epoch: 0 [2048/5120 (40%)] Data (t): 0.020 Batch (t): 0.200, 640.000/s, 640.000/s/gpu LR: 0.000452 Loss: 4.8973
"""


def test_open_clip_windows_after_the_warmup(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "out.log").write_text(OPEN_CLIP_LOG)
    windows, wait = bench.open_clip_windows(tmp_path, 128, warmup_steps=6)
    # lines end at steps 1, 6, 11, 16: the windows starting at step 6 and 11 are timed
    assert windows == [(5, pytest.approx(2.0)), (5, pytest.approx(1.0))]
    assert wait == pytest.approx((5 * 0.010 + 5 * 0.020) / 3.0)


def test_ours_windows_after_the_warmup(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    rows = [{"step": 5, "samples_per_s": 100.0}, {"eval/x": 1, "step": 5}, {"step": 10, "samples_per_s": 320.0},
            {"step": 15, "samples_per_s": 640.0}]
    (tmp_path / "bench" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert bench.ours_windows(tmp_path, 128, warmup_steps=5) == [(5, pytest.approx(2.0)), (5, pytest.approx(1.0))]


def test_both_trainers_get_the_same_settings(tmp_path: Path) -> None:
    args = bench.parse_args(["--rows", "tiny-2p-zero1", "--quick"])
    row = bench.ROWS["tiny-2p-zero1"]
    ours = " ".join(bench.ours_command(row, "ours", ["a.tar", "b.tar"], tmp_path, args))
    command = bench.open_clip_command(row, ["a.tar", "b.tar"], tmp_path, args)
    theirs = json.loads(Path(command[-1]).read_text())  # under torchrun the flags travel in a file
    flag = {theirs[i]: theirs[i + 1] for i in range(len(theirs) - 1) if theirs[i].startswith("--")}
    assert "--nproc_per_node=2" in ours and "--nproc_per_node=2" in command
    assert f"data.batch_size={flag['--batch-size']}" in ours and f"data.num_workers={flag['--workers']}" in ours
    assert f"model.name={flag['--model']}" in ours and "engine.deepspeed_config=zero1" in ours
    assert f"optim.lr={flag['--lr']}" in ours and f"optim.warmup_steps={flag['--warmup']}" in ours
    assert "optim.weight_decay=0.2" in ours and flag["--wd"] == "0.2"
    assert "optim.betas=[0.9,0.98]" in ours and (flag["--beta1"], flag["--beta2"]) == ("0.9", "0.98")
    assert "optim.grad_clip=1.0" in ours and flag["--grad-clip-norm"] == "1.0"
    steps = args.warmup_steps + args.timed_steps
    assert f"train.steps={steps}" in ours and int(flag["--train-num-samples"]) == steps * row.batch * row.procs
    assert "--local-loss" in theirs and "--gather-with-grad" in theirs and flag["--dist-backend"] == "gloo"
    assert "data.resampled=true" in ours and "--dataset-resampled" in theirs


def test_summary_ratios_pair_rounds() -> None:
    Job = bench.Job
    jobs = [Job("r", "ours", 0, 110.0), Job("r", "open_clip", 0, 100.0), Job("r", "open_clip", 1, 200.0),
            Job("r", "ours", 1, 180.0)]
    ours = next(s for s in bench.summarise(jobs, {"r": 1e9}, {}) if s["variant"] == "ours")
    assert ours["ratio_min"] == pytest.approx(0.9) and ours["ratio_max"] == pytest.approx(1.1)
    assert ours["achieved_tflops"] == pytest.approx(145.0 * 1e9 / 1e12)


def test_a_stopped_job_takes_processes_in_their_own_sessions_with_it() -> None:
    """torchrun starts each rank in a session of its own: killing the job's process group would leave them."""
    import subprocess
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               "'-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        (rank,) = psutil.Process(parent.pid).children()
        assert os.getsid(rank.pid) != os.getsid(parent.pid)
        bench._kill_tree(parent.pid)
        parent.wait(timeout=10)
        rank.wait(timeout=10)  # psutil reaps nothing it does not own: wait() returns once the process is gone
        assert not rank.is_running()
    finally:
        bench._kill_tree(parent.pid)  # whatever failed above, nothing is left sleeping
