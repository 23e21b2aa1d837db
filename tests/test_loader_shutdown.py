"""A data error raised while DataLoader workers run must end the process: the workers ignore SIGTERM (they leave
preemption to the training process), so whoever stops them has to make sure they go (data/loader.py)."""

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import micro_overrides


def _garbage_shards(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"shard-{i:06d}.tar").write_bytes(b"\0garbage" * 100)
    return folder


def test_all_garbage_shards_with_two_workers_exit_3_in_one_line_without_hanging(tmp_path: Path) -> None:
    data = _garbage_shards(tmp_path / "garbage")
    overrides = micro_overrides(data, tmp_path / "runs") + ["data.num_workers=2", "eval.tasks=[]"]
    start = time.monotonic()
    # Before the fix the interpreter's exit joined workers that ignored the SIGTERM sent to them: a hang.
    done = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "train", "demo", *overrides],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    # The error is the one line that is not a log record (those start with a date)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line[:4].isdigit()]
    assert len(lines) == 1 and "no usable sample in a whole pass" in lines[0] and "shard_unreadable" in lines[0], lines
    assert time.monotonic() - start < 90


def test_a_closed_loader_has_no_live_workers_left(tmp_path: Path) -> None:
    from mmpretrain.data.config import DataConfig
    from tests.conftest import id_loader, write_id_shards

    write_id_shards(tmp_path / "ids", 0, [8, 8, 8, 8])
    config = DataConfig(train=[str(tmp_path / "ids")], batch_size=4, num_workers=2, shuffle_buffer=1)
    config.limits.min_side = 1
    loader = id_loader(config)
    loader.next_batch()
    workers = list(loader._batches._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    loader.close()
    assert not any(w.is_alive() for w in workers)
    loader.close()  # idempotent
