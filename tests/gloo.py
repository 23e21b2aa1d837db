"""Run a function of (rank, world size) on N spawned CPU processes joined by gloo and collect what each returned."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RankFn = Callable[[int, int], Any]  # (rank, world size) -> what the rank saves; module-level, so spawn can pickle it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: RankFn) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        torch.save(fn(rank, world_size), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: RankFn, world_size: int, out_dir: Path) -> list[Any]:
    """`fn(rank, world_size)` on every rank of a fresh gloo group; the results in rank order."""
    mp.start_processes(_worker, args=(world_size, free_port(), str(out_dir), fn), nprocs=world_size, join=True,
                       start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world_size)]
