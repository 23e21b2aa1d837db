"""Checkpoints: one owner for the directory, the names, keep-K, atomic writes and the registered state.

A checkpoint of step N is `checkpoints/step-NNNNNNNNN.pt`, written by rank 0, atomically (a temp file renamed
into place), holding `{"format", "step", <metadata>, <part name>: <part state>, ...}` for every registered
stateful part (engine, train loader, anything later such as an EMA). A part registered `per_rank` contributes
every rank's state, in rank order (the train loader: each rank reads its own shards). An engine with per-rank
state of its own (DeepSpeed's optimizer partitions) writes it into `checkpoints/step-NNNNNNNNN/` first; the
`.pt` file is written last, so its presence marks a complete checkpoint, and `latest` only ever finds those.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from mmpretrain.errors import ConfigError

CHECKPOINT_FORMAT = 2  # 1: before the Checkpointer (engine state at the top level, replayed data positions)
_CHECKPOINT = re.compile(r"^step-(\d{9})\.pt$")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Any) -> None: ...


def step_name(step: int) -> str:
    """The one place a checkpoint's name is made: `step-000001000`."""
    return f"step-{step:09d}"


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"{step_name(step)}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Temp files from an interrupted save never match the pattern."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(directory: Path, resume: str) -> Optional[Path]:
    """`latest` -> newest checkpoint in `directory` (None if there is none yet); otherwise a checkpoint file, a
    DeepSpeed step folder (its `.pt` beside it), a run directory or a checkpoints folder (their newest)."""
    if resume == "latest":
        checkpoints = list_checkpoints(directory)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if path.is_dir() and path.with_name(path.name + ".pt").is_file():
        return path.with_name(path.name + ".pt")
    if path.is_dir():
        checkpoints = list_checkpoints(path if path.name == "checkpoints" else path / "checkpoints")
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoints in {path}")
        return checkpoints[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {resume!r} not found")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data; loading it must not run code. mmap: every rank of a DeepSpeed run reads
    # the consolidated file, and only the parts it uses should be paged in.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint of either format."""
    if "engine" in checkpoint and "model" in checkpoint["engine"]:
        return checkpoint["engine"]["model"]
    if "model" in checkpoint:
        return checkpoint["model"]
    raise KeyError("not a training checkpoint (no model state dict)")


def atomic_save(state: Mapping[str, Any], path: Path) -> None:
    """Write `state` to `path` so a reader sees the old file set or the complete new file, never a part."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)  # atomic on POSIX


@dataclass
class _Part:
    part: Stateful
    per_rank: bool
    sharded: bool


def _gather_one(value: Any) -> list[Any]:
    return [value]


class Checkpointer:
    """Saves and restores the registered parts under `directory` (see module doc).

    `gather` collects an object from every rank (rank order) and `barrier` waits for all; both are collectives
    given by the composition root, so every rank must call `save` / `restore` at the same step.
    """

    def __init__(self, directory: Path, keep: int, is_main: bool = True,
                 gather: Callable[[Any], list[Any]] = _gather_one, barrier: Callable[[], None] = lambda: None,
                 metadata: Optional[Mapping[str, Any]] = None) -> None:
        if keep < 1:
            raise ConfigError(f"train.keep_checkpoints must be >= 1, got {keep}")
        self.directory = directory
        self.keep = keep
        self.is_main = is_main
        self._gather = gather
        self._barrier = barrier
        self.metadata = dict(metadata or {})
        self._parts: dict[str, _Part] = {}
        self.last_saved: Optional[int] = None  # the step saved or restored last

    def register(self, name: str, part: Stateful, *, per_rank: bool = False, sharded: bool = False) -> None:
        """Add a stateful part. `per_rank`: every rank's state is kept (in rank order) and handed back whole;
        `sharded`: the part also writes per-rank files (`save_shards(folder)` / `load_shards(folder)`)."""
        if name in self._parts or name in ("format", "step", *self.metadata):
            raise ValueError(f"checkpoint part name {name!r} is taken")
        self._parts[name] = _Part(part, per_rank, sharded)

    def save(self, step: int) -> Path:
        """Write step `step` (every rank calls this), then keep only the newest `keep` checkpoints."""
        path = checkpoint_path(self.directory, step)
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Saving a step again (an interrupted save, or another layout): no stale per-rank file may remain.
            path.unlink(missing_ok=True)
            shutil.rmtree(self.directory / step_name(step), ignore_errors=True)
        self._barrier()
        for entry in self._parts.values():
            if entry.sharded:
                entry.part.save_shards(self.directory / step_name(step))  # type: ignore[attr-defined]
        states = {name: self._gather(e.part.state_dict()) if e.per_rank else e.part.state_dict()
                  for name, e in self._parts.items()}
        if self.is_main:
            atomic_save({"format": CHECKPOINT_FORMAT, "step": step, **self.metadata, **states}, path)
            self._prune()
        self._barrier()
        self.last_saved = step
        return path

    def restore(self, resume: str) -> Optional[tuple[Path, int]]:
        """Load the checkpoint `resume` names into every part; (path, step), or None when `latest` finds none."""
        path = resolve_resume(self.directory, resume)
        if path is None:
            return None
        state = load_checkpoint(path)
        found = state.get("format", 1)
        if found != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} was written in checkpoint format {found}, this version resumes format "
                              f"{CHECKPOINT_FORMAT}: resume it with the version that wrote it, or evaluate and "
                              "export it (both still read it)")
        missing = [name for name in self._parts if name not in state]
        if missing:
            raise ConfigError(f"{path} holds no state for {missing}")
        for name, entry in self._parts.items():
            entry.part.load_state_dict(state[name])
            if entry.sharded:
                entry.part.load_shards(path.with_suffix(""))  # type: ignore[attr-defined]
        self.last_saved = int(state["step"])
        return path, self.last_saved

    def _prune(self) -> None:
        """Delete all but the newest `keep` complete checkpoints, with their shard folders, and shard folders
        left without a checkpoint by an interrupted save before the newest complete one."""
        complete = list_checkpoints(self.directory)
        for old in complete[:-self.keep]:
            old.unlink(missing_ok=True)  # first: a checkpoint without its .pt is incomplete, never taken
            shutil.rmtree(old.with_suffix(""), ignore_errors=True)
        if not complete:
            return
        newest = complete[-1].with_suffix("").name
        for folder in self.directory.iterdir():
            if (folder.is_dir() and re.fullmatch(r"step-\d{9}", folder.name) and folder.name < newest
                    and not folder.with_name(folder.name + ".pt").exists()):
                shutil.rmtree(folder, ignore_errors=True)
