"""Copy the code a job will run into its run directory (lingua's idea), so a queued or requeued job runs the code
as it was at submission, not whatever the checkout holds by the time SLURM starts it, and the run directory says
exactly what produced it (VERSION: git commit and whether the tree had uncommitted changes)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import mmpretrain.launch

# What the trainer needs at run time: the package, its configs (model configs are looked up by name under
# configs/), and the rest that ships with it, so the snapshot can also be installed or diffed on its own.
SNAPSHOT_TREES = ("mmpretrain", "launch", "data_tools", "configs")
SNAPSHOT_FILES = ("pyproject.toml",)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")


def repo_root() -> Path:
    """The checkout this launcher runs from: the folder holding launch/ (and mmpretrain/ beside it). In an editable
    install mmpretrain.launch is that launch/ folder; in a wheel it is mmpretrain/launch, whose parent holds no
    mmpretrain/ and is refused by snapshot_code."""
    return Path(mmpretrain.launch.__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> str | None:
    """Output of one git command in `root`, or None when git or the repository is missing."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_version(root: Path) -> dict[str, str]:
    """Commit hash and dirty flag of `root` ("unknown" outside a git checkout)."""
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain") if commit else None  # untracked files count: they are copied too
    return {"commit": commit or "unknown",
            "dirty": "unknown" if status is None else str(bool(status)).lower()}


def snapshot_code(dest: Path, root: Path | None = None) -> Path:
    """Replace `dest` with a copy of the code trees of `root` (default: this checkout) and a VERSION file."""
    root = root or repo_root()
    if not (root / "mmpretrain").is_dir():
        raise FileNotFoundError(f"no mmpretrain/ package beside launch/ in {root}: run the launcher from a "
                                "checkout (pip install -e .) so the code can be snapshotted")
    if dest.exists():
        shutil.rmtree(dest)  # a re-prepared run (dry run first, then submit) gets a fresh copy, not a merge
    dest.mkdir(parents=True)
    copied = []
    for name in SNAPSHOT_TREES:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, ignore=_IGNORE)
            copied.append(name)
    for name in SNAPSHOT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
            copied.append(name)
    version = {**git_version(root), "source": str(root), "contents": " ".join(copied),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (dest / "VERSION").write_text("".join(f"{key}: {value}\n" for key, value in version.items()), encoding="utf-8")
    return dest
