"""Packaging: the repository's launch/ and data_tools/ folders install as mmpretrain.launch and
mmpretrain.data_tools (pyproject's package-dir), never as top-level `launch` / `data_tools`, and the explicit
package list names every package folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setuptools_table() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Every package in the repository by import name: mmpretrain/ and its sub-folders, and the mapped folders."""
    roots = {"mmpretrain": REPO / "mmpretrain",
             **{name: REPO / folder for name, folder in _setuptools_table()["package-dir"].items()}}
    packages = {}
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            packages[".".join((name, *init.parent.relative_to(root).parts))] = init.parent
    return packages


def test_launch_and_data_tools_are_mapped_inside_mmpretrain():
    assert _setuptools_table()["package-dir"] == {"mmpretrain.launch": "launch", "mmpretrain.data_tools": "data_tools"}


def test_the_package_list_names_every_package_folder():
    # setuptools installs only the listed packages: a new sub-package left out would be missing from installs.
    assert sorted(_setuptools_table()["packages"]) == sorted(_package_folders())


def test_package_data_holds_the_sbatch_template():
    folders = _package_folders()
    for package, patterns in _setuptools_table()["package-data"].items():
        assert all(list(folders[package].glob(pattern)) for pattern in patterns), (package, patterns)
    assert (folders["mmpretrain.launch"] / "templates" / "sbatch.sh").is_file()


def _run_elsewhere(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run this interpreter outside the checkout, so only the installed mapping can find the packages."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_installed_names_are_namespaced(tmp_path):
    done = _run_elsewhere(tmp_path, "-c", """
import importlib.util
import mmpretrain.data_tools.write_shards, mmpretrain.launch.cli, mmpretrain.launch.slurm
assert mmpretrain.launch.slurm.TEMPLATE.is_file()
assert importlib.util.find_spec("launch") is None and importlib.util.find_spec("data_tools") is None
""")
    assert done.returncode == 0, f"reinstall with `pip install -e .` if this is an older install:\n{done.stderr}"


def test_the_tools_run_as_modules(tmp_path):
    for module, usage in [("mmpretrain.data_tools.write_shards", "usage: mmpretrain write-shards"),
                          ("mmpretrain.launch.cli", "usage: mmpretrain launch")]:
        done = _run_elsewhere(tmp_path, "-m", module, "--help")
        assert done.returncode == 0 and usage in done.stdout, (module, done.stderr)
