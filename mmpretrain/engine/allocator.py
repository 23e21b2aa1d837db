"""glibc malloc settings for a training process (`train.malloc`).

glibc's default malloc adapts its mmap threshold to the largest block freed so far and hands memory above a 128 KiB
trim threshold back to the OS whenever the top of the heap is free. A training step frees and reallocates the same
multi-megabyte temporaries every step (activations, gradients, AdamW's intermediates), so on CPU the process can
return them to the OS and fault them in again, page by page, each step: minor page faults that cost time in the
kernel, not in any kernel of ours. Fixing the mmap threshold at 32 MiB (glibc's maximum on 64-bit) and the trim
threshold at 1 GiB keeps those blocks in the heap for reuse. The measured effect is in docs/BENCHMARKS.md
("Training throughput"); it is why `tuned` is the default.

`mallopt` is called at start-up, before the DataLoader workers fork (they inherit the settings). It is the same as
setting `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (or `GLIBC_TUNABLES=glibc.malloc.*`) before the process
starts, which is why a value already in the environment wins: whoever set it chose. The cost is memory the
process keeps instead of returning: peak RSS +7% for mmp-tiny-rn in one process (1382 vs 1295 MiB), and the forked
DataLoader workers inherit the thresholds too. Off glibc (musl, macOS) or under an LD_PRELOADed allocator
(jemalloc, tcmalloc) nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from typing import Optional

log = logging.getLogger(__name__)

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger values are refused
TRIM_THRESHOLD = 1024 * 1024 * 1024
ENV_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _glibc_mallopt() -> Optional[ctypes._CFuncPtr]:
    if platform.libc_ver()[0] != "glibc":
        return None
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in OTHER_ALLOCATORS):
        return None  # malloc is not glibc's: its mallopt would tune an allocator nobody uses
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (see module doc). True when both were set by this call."""
    if any(key in os.environ for key in ENV_KEYS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        log.debug("malloc: %s set in the environment, left as it is", [k for k in ENV_KEYS if k in os.environ])
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        log.debug("malloc: not glibc's (or another allocator is preloaded); train.malloc=tuned changes nothing")
        return False
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.warning("malloc: glibc refused mallopt; running with its default thresholds")
    return done


def apply_malloc_setting(setting: str) -> bool:
    """`train.malloc`: `tuned` (the default) or `system` (glibc's own adaptive behaviour)."""
    return tune_malloc() if setting == "tuned" else False
