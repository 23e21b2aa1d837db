"""Where the project's shipped files live: configs/ (model configs, experiments, demo.yaml).

Resolved from MMPRETRAIN_CONFIG_DIR when set, else the repository checkout this package was installed from
(the README installs in editable mode), so `mmpretrain demo` works from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def configs_dir() -> Path:
    """The configs/ directory: $MMPRETRAIN_CONFIG_DIR, else <repo>/configs beside the package."""
    env = os.environ.get("MMPRETRAIN_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"configs directory not found at {path}; set MMPRETRAIN_CONFIG_DIR to the "
                                "repository's configs/ folder (or install with `pip install -e .`)")
    return path


def resolve_config_path(name_or_path: str) -> Path:
    """A config given as a path, or as a name under configs/ (``demo`` -> configs/demo.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (configs_dir() / name_or_path, configs_dir() / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {name_or_path!r} not found (neither a file nor a name under {configs_dir()})")
