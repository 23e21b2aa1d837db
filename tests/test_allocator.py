"""train.malloc: glibc's thresholds fixed at start-up (mmpretrain/engine/allocator.py).

The behaviour is shown, not assumed: a step-like loop that frees and reallocates multi-megabyte temporaries takes
its memory back from the OS on every iteration under glibc's defaults (minor page faults per step), and not once the
thresholds are tuned. Each side runs in a fresh interpreter, so neither inherits the other's settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mmpretrain.config import load_config
from mmpretrain.errors import ConfigError

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

STEP_LOOP = r"""
import resource, sys
import torch
from mmpretrain.engine.allocator import apply_malloc_setting
print(apply_malloc_setting(sys.argv[1]))
torch.set_num_threads(1)
params = [torch.randn(n) for n in (3_000_000, 500_000, 2_000_000, 1_000_000)]   # 2-12 MB tensors
def step():  # like AdamW's foreach-free update: one temporary per parameter, all freed at the end
    temporaries = [p * 2.0 + 1 for p in params]
    del temporaries
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", STEP_LOOP, setting], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0], int(out[1])


@glibc_only
def test_tuned_malloc_stops_the_page_faults_of_every_step() -> None:
    applied, tuned = _faults("tuned")
    not_applied, system = _faults("system")
    assert (applied, not_applied) == ("True", "False")
    # 30 steps x ~13 MB of temporaries: glibc's defaults fault ~2.5k pages a step back in; tuned, almost none
    assert system > 30 * 1000, system
    assert tuned * 10 < system, (tuned, system)


@glibc_only
def test_a_setting_in_the_environment_wins() -> None:
    applied, faults = _faults("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == "False"  # whoever set the variable chose; tune_malloc leaves it
    assert faults > 30 * 1000


def test_train_malloc_is_checked_at_load() -> None:
    assert load_config(None).train.malloc == "tuned"
    assert load_config(None, ["train.malloc=system"]).train.malloc == "system"
    with pytest.raises(ConfigError, match="train.malloc"):
        load_config(None, ["train.malloc=jemalloc"])
