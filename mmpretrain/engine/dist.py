"""Process start and shutdown: which rank this is, under torchrun, the deepspeed launcher, srun, or alone.

torchrun and the deepspeed launcher export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; a plain
`srun` exports only SLURM_* variables, from which the same facts are derived. No variables at all means one
process and no process group. NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    local_rank: int
    world_size: int
    master_addr: Optional[str]
    master_port: Optional[int]
    launcher: str  # "torchrun" (or the deepspeed launcher), "srun" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM nodelist: "gpu[03-05,7],cpu1" -> "gpu03" (the rendezvous host)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None or not match.group(1):
        raise ValueError(f"cannot parse SLURM nodelist {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def detect_process(env: Mapping[str, str] = os.environ) -> ProcessInfo:
    """Read this process's place in the job from the launcher's environment variables."""
    if "RANK" in env and "WORLD_SIZE" in env:
        port = env.get("MASTER_PORT")
        return ProcessInfo(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                           env.get("MASTER_ADDR"), int(port) if port else None, "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else None)
        port = int(env.get("MASTER_PORT", DEFAULT_PORT))
        return ProcessInfo(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                           addr, port, "srun")
    return ProcessInfo(0, 0, 1, None, None, "single")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(info: ProcessInfo, require_group: bool = False, timeout_minutes: int = 30) -> None:
    """Join the process group. A single process gets a group of one only when `require_group` (DeepSpeed
    needs one even alone), on a free local port."""
    if dist.is_initialized() or not (info.distributed or require_group):
        return
    if not info.distributed and info.master_addr is None:
        info = ProcessInfo(0, 0, 1, "127.0.0.1", _free_port(), info.launcher)
    if info.master_addr is None or info.master_port is None:
        raise RuntimeError(f"{info.launcher}: world size {info.world_size} but no MASTER_ADDR/MASTER_PORT")
    # torch's env:// rendezvous reads these; srun alone does not set them.
    os.environ.setdefault("MASTER_ADDR", info.master_addr)
    os.environ.setdefault("MASTER_PORT", str(info.master_port))
    for name, value in (("RANK", info.rank), ("LOCAL_RANK", info.local_rank), ("WORLD_SIZE", info.world_size)):
        os.environ.setdefault(name, str(value))  # DeepSpeed reads them even when the group exists
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(minutes=timeout_minutes))


def multi_process() -> bool:
    """True inside a process group of more than one rank: collectives are needed (and must be called by all)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where a tensor must live for a collective: NCCL reduces only GPU tensors, gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly: a barrier, then destroy (gloo may abort at exit otherwise)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[int]) -> list[int]:
    """Element-wise sum of a list of counts over all ranks (float64 on the collective's device: exact for
    counts below 2^53). A collective: every rank calls it at the same point."""
    if not multi_process():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def all_true(flag: bool) -> bool:
    """True when `flag` is True on every rank (one all-reduce of one element). A collective."""
    if not multi_process():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def all_gather(value: object) -> list:
    """`value` from every rank, in rank order (pickled: small objects only). A collective."""
    if not multi_process():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast(value: object, src: int = 0) -> object:
    """Rank `src`'s `value` on every rank (pickled: small objects only). A collective: every rank calls it, the
    others with any placeholder. Used where one rank decides for all (which checkpoint to resume)."""
    if not multi_process():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def global_mean(value: torch.Tensor) -> float:
    """The mean of a per-rank scalar over ranks (the global-batch loss). A sync point: only on log steps."""
    if multi_process():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value.item())
