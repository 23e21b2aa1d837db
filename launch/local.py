"""Run training as N processes on this machine: torchrun --standalone, one worker per GPU (or CPU process).

The same `mmpretrain train` the SLURM job runs, so a config that works here works on the cluster."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def build_local_command(config: str, overrides: Sequence[str], nproc: int, extra_args: Sequence[str] = (),
                        python: str | None = None) -> list[str]:
    """The torchrun command line. torchrun is called as `python -m torch.distributed.run` so it is the torch of
    this interpreter, not whichever `torchrun` comes first on PATH."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    # torchrun forwards only these signals to the training processes (SIGUSR1 is SLURM's preemption warning).
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(nproc), f"--signals-to-handle={FORWARDED_SIGNALS}", "-m", "mmpretrain.cli", "train", config,
            *overrides, *extra_args]


def run_local(config: str, overrides: Sequence[str], nproc: int, extra_args: Sequence[str] = ()) -> int:
    """Validate the config here (a bad override fails once, not in N processes), then run torchrun with its
    output streaming to this terminal; return its exit code."""
    from mmpretrain.config import load_config
    from mmpretrain.engine.factory import check_world_size
    from mmpretrain.paths import resolve_config_path

    check_world_size(load_config(resolve_config_path(config), overrides).engine, nproc)
    command = build_local_command(config, overrides, nproc, extra_args)
    print("running:", " ".join(command), flush=True)
    child = subprocess.Popen(command)  # inherits stdout/stderr: output streams as it is written

    def forward(signum: int, frame: object) -> None:
        # A signal to this launcher (SIGTERM from a scheduler, SIGUSR1) goes on to torchrun, which passes it to the
        # training processes; this launcher then waits for them instead of leaving them running as orphans.
        child.send_signal(signum)

    handled = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
