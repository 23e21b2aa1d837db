"""One training job per run directory: `run_dir/.lock` names the job that holds it (host, pid, start time).

Rank 0 takes it before anything in the run directory changes and gives it back when the run ends (`release()`,
also registered with `atexit`, so a process that ends normally always gives it back). The file is made complete
and then hard-linked into place, which fails if a lock exists: two jobs can never both hold it, and a reader never
sees a half-written one. A lock left by a dead job is recognised on its own host (that pid no longer runs) and
taken over with one warning line, as is one left by an earlier run of the same requeued SLURM job (same job id,
another restart count: SLURM runs one at a time, possibly on another node); a live job's lock, or one from another host (whose processes cannot be
checked), is refused in one line saying who holds it and how to remove it if that job is dead.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def read_holder(path: Path) -> Optional[dict[str, Any]]:
    """The lock's holder {host, pid, started}, or None when the file is gone or unreadable."""
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and {"host", "pid", "started"} <= set(holder) else None
    except (OSError, ValueError):
        return None


def _slurm_incarnation() -> Optional[str]:
    """`<job id>.<restart count>` inside a SLURM job: a requeued job keeps its id and counts its restarts."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"{job}.{os.environ.get('SLURM_RESTART_COUNT', '0')}" if job else None


def _earlier_incarnation(theirs: Optional[str], ours: Optional[str]) -> bool:
    """The lock was taken by this same SLURM job before a requeue (SLURM runs one incarnation at a time, so
    that one is dead even if it ran on another host)."""
    if not theirs or not ours:
        return False
    job, _, restart = theirs.partition(".")
    our_job, _, our_restart = ours.partition(".")
    return job == our_job and restart != our_restart


class RunLock:
    """The lock of one run directory; a context manager (`with RunLock(run_dir): ...`) or `acquire()` /
    `release()`. Re-acquiring a lock this very process holds (an earlier run in the same process) is allowed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "slurm": _slurm_incarnation()}
        self.held = False

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self._create():
            found = read_holder(self.path)
            if found is None:
                raise ConfigError(f"{self.run_dir} is locked by {self.path}, which cannot be read: if no job is "
                                  f"running in it, remove {self.path}")
            mine = found["host"] == self.holder["host"]
            if mine and int(found["pid"]) == os.getpid():
                pass  # this process's own lock (a run before this one in the same process)
            elif mine and not pid_alive(int(found["pid"])):
                log.warning("%s: taking over a stale lock of pid %s (started %s), which no longer runs on %s",
                            self.run_dir, found["pid"], found["started"], found["host"])
            elif _earlier_incarnation(found.get("slurm"), self.holder["slurm"]):
                log.warning("%s: taking over the lock of an earlier run of this requeued SLURM job (%s, host %s, "
                            "pid %s, started %s)", self.run_dir, found["slurm"], found["host"], found["pid"],
                            found["started"])
            elif mine:
                raise ConfigError(f"{self.run_dir} is in use by another training job: host {found['host']}, pid "
                                  f"{found['pid']}, started {found['started']} ({self.path}); wait for it to end "
                                  "or choose another run_name")
            else:
                raise ConfigError(f"{self.run_dir} is locked by a job on another host: host {found['host']}, pid "
                                  f"{found['pid']}, started {found['started']}; its liveness cannot be checked "
                                  f"from here: if that job is dead, remove {self.path}")
            self.path.unlink(missing_ok=True)
            if not self._create():  # another job took it over in the meantime
                found = read_holder(self.path) or {}
                raise ConfigError(f"{self.run_dir} was just locked by another job: host {found.get('host')}, pid "
                                  f"{found.get('pid')}, started {found.get('started')}")
        self.held = True
        atexit.register(self.release)
        return self

    def _create(self) -> bool:
        """Write the holder to a temp file and hard-link it into place: False if a lock exists already."""
        tmp = self.path.with_name(f"{LOCK_NAME}.tmp-{self.holder['host']}-{os.getpid()}")
        tmp.write_text(json.dumps(self.holder))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process still holds it (idempotent; also run at exit)."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        found = read_holder(self.path)
        if found is not None and found["host"] == self.holder["host"] and found["pid"] == self.holder["pid"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
