"""Checkpoints: atomic save (write a temp file, then rename), keep the last K, find the latest."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_CHECKPOINT = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Temp files from an interrupted save never match the pattern."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` for `step` atomically, then delete all but the newest `keep` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, final)  # atomic on POSIX: a reader sees the old file set or the complete new one
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def resolve_resume(directory: Path, resume: str) -> Path | None:
    """`latest` -> newest checkpoint in `directory` (None if there is none yet); otherwise a path."""
    if resume == "latest":
        checkpoints = list_checkpoints(directory)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if path.is_dir():
        checkpoints = list_checkpoints(path if path.name == "checkpoints" else path / "checkpoints")
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoints in {path}")
        return checkpoints[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {resume!r} not found")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data; loading it must not run code.
    return torch.load(path, map_location="cpu", weights_only=True)
