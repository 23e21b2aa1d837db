"""Peak loss memory and time per rank: our ClipLoss/SigLipLoss (plain, blockwise) against open_clip's, side by side.

    python bench/loss_memory.py --world-sizes 1 2 4 --global-batches 1024 4096 16384 --dim 256 --chunk 1024

Each (world size, global batch) is one fresh gloo job on CPU; every rank runs every loss on the same local
features (forward + backward), twice:

- memory: under `LiveTensorBytes`, a TorchDispatchMode that sees every tensor an ATen op creates (forward,
  backward, collectives' output buffers) and drops it when its storage dies, so its peak is the CPU analogue of
  `torch.cuda.max_memory_allocated()` for the loss alone (inputs excluded, their gradients included; before the
  ring benchmark the inputs' storages were counted once a view of them was taken, which every loss does: 2 x
  local batch x D more on every row);
- time: without the mode, ranks in step (barrier), slowest rank's wall time, best of `--repeats`; `cpu_share` in
  the JSON rows is the fraction of the machine's cores the ranks used meanwhile (well below 1: others' jobs ran).

Prints a Markdown table (peak MiB per rank = max over ranks) and, with --json, writes the raw rows.
"""

from __future__ import annotations

import argparse
import warnings
import importlib.util
import json
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmpretrain.losses import ClipLoss, SigLipLoss  # noqa: E402

LOSSES = ["ours clip plain", "ours clip blockwise", "ours clip ring", "open_clip ClipLoss", "ours siglip plain",
          "ours siglip blockwise", "open_clip SigLipLoss"]


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages created by ATen ops and still alive; `peak` is their maximum at op boundaries.

    `exclude`: tensors whose storages are never counted (the inputs): an op that returns a view of one (a
    `detach`, an `unsqueeze`) creates no memory, but its storage is not one the mode saw created."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self.live.items()):  # storages freed since the last op
            if ref.expired():
                self.current -= nbytes
                del self.live[key]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live and storage.data_ptr() not in self.excluded \
                        and storage.nbytes() > 0:
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def open_clip_losses() -> Any:
    """open_clip/loss.py alone (the package import pulls in every model and costs seconds per rank)."""
    path = Path(list(importlib.util.find_spec("open_clip").submodule_search_locations)[0]) / "loss.py"
    spec = importlib.util.spec_from_file_location("open_clip_loss_only", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(name: str, rank: int, world_size: int, chunk: int, ring_chunk: int) -> Callable[..., torch.Tensor]:
    oc = open_clip_losses()
    table: dict[str, Callable[..., torch.Tensor]] = {
        "ours clip plain": ClipLoss(),
        "ours clip blockwise": ClipLoss(chunk_size=chunk),
        "ours clip ring": ClipLoss(chunk_size=ring_chunk, impl="ring"),
        "open_clip ClipLoss": oc.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size),
        "ours siglip plain": SigLipLoss(),
        "ours siglip blockwise": SigLipLoss(chunk_size=chunk),
        "open_clip SigLipLoss": oc.SigLipLoss(rank=rank, world_size=world_size),
    }
    return table[name]


def step(loss_fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> None:
    leaves = [x.detach().requires_grad_() for x in inputs]
    loss_fn(*leaves).backward()


def _worker(rank: int, world_size: int, port: int, args: argparse.Namespace, global_batch: int, out: str) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.distributed.nn deprecation, both sides
    torch.set_num_threads(max(1, args.threads // world_size))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(minutes=30))
    g = torch.Generator().manual_seed(rank)
    local = global_batch // world_size
    image = F.normalize(torch.randn(local, args.dim, generator=g), dim=-1)
    text = F.normalize(torch.randn(local, args.dim, generator=g), dim=-1)
    inputs = [image, text, torch.tensor(10.0), torch.tensor(-10.0)]
    rows = []
    for name in args.losses:
        loss_fn = build(name, rank, world_size, args.chunk, args.ring_chunk)
        dist.barrier()
        tracker = LiveTensorBytes(exclude=inputs)
        with tracker:
            step(loss_fn, inputs)
        best, best_cpu = float("inf"), 0.0
        for _ in range(args.repeats):
            dist.barrier()
            start, cpu = time.perf_counter(), time.process_time()
            step(loss_fn, inputs)
            dist.barrier()  # sync point: a step is as slow as its slowest rank
            if time.perf_counter() - start < best:
                best, best_cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append({"loss": name, "world_size": world_size, "global_batch": global_batch, "local_batch": local,
                     "dim": args.dim, "chunk": args.ring_chunk if name == "ours clip ring" else args.chunk,
                     "rank": rank, "peak_mib": tracker.peak / 2**20, "time_s": best, "cpu_s": best_cpu,
                     "threads": torch.get_num_threads()})
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(args: argparse.Namespace, world_size: int, global_batch: int) -> list[dict[str, Any]]:
    """One fresh multi-process job; per loss, the max over ranks of peak memory and time."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world_size, free_port(), args, global_batch, out), nprocs=world_size,
                           join=True, start_method="spawn")
        per_rank = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]
    merged = []
    for rows in zip(*per_rank):
        row = dict(rows[0], peak_mib=max(r["peak_mib"] for r in rows), time_s=max(r["time_s"] for r in rows))
        # The share of the machine's cores our ranks used during the best step (CPU seconds of every thread of
        # every rank / wall / cores): well below 1 when other jobs took CPU and the time is not clean.
        row["cpu_share"] = round(sum(r["cpu_s"] for r in rows) / row["time_s"] / (os.cpu_count() or 1), 3)
        row.pop("rank")
        row.pop("cpu_s")
        merged.append(row)
    return merged


def wait_for_quiet(threshold: Optional[float], patience_s: float) -> float:
    """The 1-minute load average once it is below `threshold` (other jobs, or our previous job's ranks, distort
    timings), or after `patience_s` seconds of waiting, whichever comes first; recorded with the rows."""
    deadline = time.monotonic() + patience_s
    while threshold is not None and os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def markdown(rows: list[dict[str, Any]]) -> str:
    """Table with each loss's ratios to open_clip's loss of the same kind at the same size."""
    lines = ["| world size | global batch | loss | peak loss MiB / rank | x open_clip mem | time s "
             "| x open_clip time |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        kind = "ClipLoss" if "clip " in row["loss"] and "siglip" not in row["loss"] else "SigLipLoss"
        if row["loss"].startswith("open_clip"):
            kind = row["loss"].split()[1]
        base = next((r for r in rows if r["loss"] == f"open_clip {kind}" and r["world_size"] == row["world_size"]
                     and r["global_batch"] == row["global_batch"] and r["dim"] == row["dim"]), None)
        mem_ratio, time_ratio = ("-", "-") if base is None else (f"{row['peak_mib'] / base['peak_mib']:.3f}",
                                                                 f"{row['time_s'] / base['time_s']:.2f}")
        lines.append(f"| {row['world_size']} | {row['global_batch']} | {row['loss']} | {row['peak_mib']:.1f} | "
                     f"{mem_ratio} | {row['time_s']:.3f} | {time_ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--global-batches", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--ring-chunk", type=int, default=256, help="chunk_size of `ours clip ring`")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the ranks")
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--append", action="store_true", help="add to the rows already in --json")
    parser.add_argument("--quiet-load", type=float, help="before each job, wait for the 1-min load average to "
                        "drop below this (e.g. 0.7)")
    parser.add_argument("--quiet-wait", type=float, default=600, help="...but wait at most this many seconds")
    args = parser.parse_args()
    rows = json.loads(args.json.read_text()) if args.append and args.json and args.json.exists() else []
    for world_size in args.world_sizes:
        for global_batch in args.global_batches:
            load = wait_for_quiet(args.quiet_load, args.quiet_wait)
            start = time.perf_counter()
            job = run_job(args, world_size, global_batch)
            for row in job:
                row["load_avg_1min_at_start"] = round(load, 2)
            rows += job
            print(f"# world {world_size} batch {global_batch}: {time.perf_counter() - start:.0f} s, "
                  f"1-min load average at start {load:.2f}", flush=True)
            if args.json:  # after every job: a long sweep that is stopped keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
