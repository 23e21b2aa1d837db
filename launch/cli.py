"""`mmpretrain launch slurm|local`: parse, call one function; bad input is one line on stderr and exit 2.

Wired from mmpretrain/cli.py as `mmpretrain.launch.cli.main(argv_after_launch)` (this folder installs as
mmpretrain.launch); also `python -m mmpretrain.launch.cli ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn


class _UsageError(Exception):
    """argparse's complaint, turned into our one-line error instead of usage text and SystemExit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file, or a name under configs/ (e.g. demo)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. train.steps=500 data.batch_size=64")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """One parser per command. Separate parsers (not subparsers) so parse_intermixed_args can take overrides
    and options in any order: `slurm demo train.steps=5 --nodes 2 --dry-run`."""
    slurm = _Parser(prog="mmpretrain launch slurm",
                    description="Snapshot the code into the run directory and submit it with sbatch.")
    _add_config(slurm)
    slurm.add_argument("--nodes", type=int, required=True)
    slurm.add_argument("--gpus-per-node", type=int, required=True)
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per node (default: 8 per GPU)")
    slurm.add_argument("--time", default="24:00:00", help="time limit, HH:MM:SS or D-HH:MM:SS (default 24:00:00)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--job-name", help="default: the config's run_name")
    slurm.add_argument("--signal-seconds", type=int, default=300,
                       help="warn the job this long before its time limit, to checkpoint and requeue (300)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="--OPTION=VALUE", dest="extra_sbatch",
                       help="an extra #SBATCH option, repeatable: --sbatch=--constraint=h100")
    slurm.add_argument("--dry-run", action="store_true", help="write the run directory and print the script only")

    local = _Parser(prog="mmpretrain launch local",
                    description="Run N training processes on this machine with torchrun --standalone.")
    _add_config(local)
    local.add_argument("--nproc", type=int, required=True, help="processes (one per GPU)")
    local.add_argument("--resume", metavar="latest|PATH", help="passed on to mmpretrain train")
    return {"slurm": slurm, "local": local}


USAGE = """usage: mmpretrain launch {slurm,local} CONFIG [options] [key.sub=value ...]

  slurm   snapshot the code into the run directory and sbatch a multi-node job
  local   run N training processes on this machine with torchrun
"""


def cmd_slurm(args: argparse.Namespace) -> int:
    from mmpretrain.launch.slurm import SlurmSpec, prepare_run

    spec = SlurmSpec(nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                     time=args.time, partition=args.partition, account=args.account, qos=args.qos,
                     job_name=args.job_name, signal_seconds=args.signal_seconds, extra_sbatch=args.extra_sbatch)
    prepare_run(args.config, args.overrides, spec, dry_run=args.dry_run)
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from mmpretrain.launch.local import run_local

    extra = ["--resume", args.resume] if args.resume else []
    return run_local(args.config, args.overrides, args.nproc, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mmpretrain launch`: returns the exit code (0 ok, 2 bad input, else the job's own)."""
    from mmpretrain.errors import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = _parsers()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command = argv[0]
    if command not in parsers:
        print(f"mmpretrain launch: error: unknown command {command!r} (choose slurm or local)", file=sys.stderr)
        return 2
    try:
        args = parsers[command].parse_intermixed_args(argv[1:])
    except _UsageError as e:
        print(f"mmpretrain launch {command}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    commands = {"slurm": cmd_slurm, "local": cmd_local}
    try:
        return commands[command](args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        # LaunchError and ConfigError are ValueErrors: the user's to fix, so one line and no traceback.
        print(f"mmpretrain launch {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
