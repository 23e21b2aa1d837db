"""SLURM submission: render the sbatch script (templates/sbatch.sh) and prepare a run directory to submit it from.

`prepare_run` validates everything before it writes anything, then lays out the run directory:
config.yaml (resolved), code/ (the code snapshot the job runs), submit.sbatch, slurm/ (one log per job), and calls
sbatch. The job itself runs `mmpretrain train <run_dir>/config.yaml --resume latest` under torchrun on every node.
"""

from __future__ import annotations

import re
import shlex
import shutil
import string
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmpretrain.launch.snapshot import snapshot_code

if TYPE_CHECKING:
    from mmpretrain.config import RunConfig

TEMPLATE = Path(__file__).with_name("templates") / "sbatch.sh"
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_WORD = re.compile(r"^[A-Za-z0-9_.,:+@=\-]+$")  # what may go into an #SBATCH value unquoted


class LaunchError(ValueError):
    """A launch request that cannot work as given (bad resources, no sbatch); reported in one line."""


class _ShellTemplate(string.Template):
    """`${name}` placeholders in lowercase only, so the shell's own $UPPERCASE variables pass through."""

    idpattern = r"[a-z][a-z0-9_]*"
    flags = 0  # string.Template matches identifiers case-insensitively by default


def time_to_seconds(time: str) -> int:
    """SLURM's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds."""
    match = _TIME.match(time)
    if not match:
        raise LaunchError(f"--time {time!r}: expected HH:MM:SS (or D-HH:MM:SS)")
    days, *parts = match.groups()
    numbers = [int(p) for p in parts if p is not None]
    if days is not None:   # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:                  # MM or MM:SS
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass
class SlurmSpec:
    """The resources of one job: `nodes` x `gpus_per_node` workers, one torchrun task per node."""

    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int | None = None     # per node (the one task); None = 8 per GPU
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None          # None = the config's run_name
    signal_seconds: int = 300            # warning before the time limit: time to save a checkpoint
    extra_sbatch: list[str] = field(default_factory=list)   # e.g. ["--constraint=h100", "--exclusive"]

    def validate(self) -> None:
        """Raise LaunchError naming the first field that SLURM or the script could not use."""
        for name in ("nodes", "gpus_per_node", "signal_seconds"):
            if getattr(self, name) < 1:
                raise LaunchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise LaunchError(f"cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if self.signal_seconds >= time_to_seconds(self.time):
            raise LaunchError(f"signal_seconds ({self.signal_seconds}) must be shorter than --time {self.time}")
        for name in ("partition", "account", "qos", "job_name"):
            value = getattr(self, name)
            if value is not None and not _WORD.match(value):
                raise LaunchError(f"{name} {value!r}: use letters, digits and _.,:+@=- only")
        for option in self.extra_sbatch:
            if not option.startswith("--") or "\n" in option:
                raise LaunchError(f"extra sbatch option {option!r}: expected one --option[=value]")

    def optional_lines(self) -> list[str]:
        """#SBATCH lines only written when given, so the cluster's defaults apply otherwise."""
        given = {"partition": self.partition, "account": self.account, "qos": self.qos}
        lines = [f"#SBATCH --{key}={value}" for key, value in given.items() if value is not None]
        return lines + [f"#SBATCH {option}" for option in self.extra_sbatch]


def job_name(spec: SlurmSpec, run_dir: Path) -> str:
    """The job's name (the %x of its log file): the spec's, else the run directory's name (the run_name)."""
    return spec.job_name or run_dir.name


def render_sbatch(spec: SlurmSpec, run_dir: Path, code_dir: Path, config_path: Path, *,
                  workdir: Path | None = None, python: str | None = None) -> str:
    """The sbatch script for `spec`. Pure but for the defaults: workdir = cwd, python = this interpreter.

    `workdir` is where the job runs (relative paths in the config resolve there); `python` must exist on the
    compute nodes (a shared venv): the script calls it by absolute path rather than trusting their PATH."""
    spec.validate()
    if any(c.isspace() for c in str(run_dir)):
        raise LaunchError(f"run directory {run_dir}: #SBATCH --output cannot hold whitespace")
    template = TEMPLATE.read_text(encoding="utf-8")
    optional = spec.optional_lines()
    if not optional:
        template = template.replace("${optional_sbatch}\n", "")  # no blank line where nothing is given
    values = {
        "job_name": job_name(spec, run_dir),
        "nodes": str(spec.nodes),
        "gpus_per_node": str(spec.gpus_per_node),
        "cpus_per_task": str(spec.cpus_per_task or 8 * spec.gpus_per_node),
        "time": spec.time,
        "optional_sbatch": "\n".join(optional),
        "log_dir": str(run_dir / "slurm"),
        "quoted_log_dir": shlex.quote(str(run_dir / "slurm")),
        "signal_seconds": str(spec.signal_seconds),
        "workdir": shlex.quote(str(workdir or Path.cwd())),
        "code_dir": shlex.quote(str(code_dir)),
        "python": shlex.quote(python or sys.executable),
        "config_path": shlex.quote(str(config_path)),
    }
    shell_template = _ShellTemplate(template)
    missing = set(shell_template.get_identifiers()) - set(values)
    if missing:
        raise KeyError(f"{TEMPLATE} uses unknown placeholders: {sorted(missing)}")
    return shell_template.safe_substitute(values)  # safe: leaves the shell's $VARIABLES alone


def _load(config_name_or_path: str, overrides: Sequence[str]) -> RunConfig:
    """The validated config; the library is imported here so `mmpretrain launch --help` stays fast."""
    from mmpretrain.config import load_config
    from mmpretrain.paths import resolve_config_path

    config = load_config(resolve_config_path(config_name_or_path), overrides)
    # The job may start in another directory: an absolute run directory means the same place everywhere.
    config.output_dir = str(Path(config.output_dir).resolve())
    return config


def prepare_run(config_name_or_path: str, overrides: Sequence[str], spec: SlurmSpec, dry_run: bool) -> Path:
    """Validate, write the run directory, and submit it (or, with `dry_run`, print the script). Returns run_dir.

    Every check (config, resources, sbatch on PATH, no finished run in the way) comes before the first write,
    so a mistake leaves nothing behind."""
    from mmpretrain.config import save_config

    from mmpretrain.engine.factory import check_world_size

    config = _load(config_name_or_path, overrides)
    spec.validate()
    check_world_size(config.engine, spec.nodes * spec.gpus_per_node)
    sbatch = shutil.which("sbatch")
    if not dry_run and sbatch is None:
        raise LaunchError("sbatch not found on PATH: submit from a SLURM login node, or pass --dry-run to only "
                          "write the run directory and script")
    run_dir = config.run_dir
    if (run_dir / "checkpoints").exists():
        raise LaunchError(f"{run_dir} already holds a run: resubmit its script (sbatch {run_dir}/submit.sbatch) "
                          "to continue it, or choose another run_name")
    config_path, code_dir, script_path = run_dir / "config.yaml", run_dir / "code", run_dir / "submit.sbatch"
    script = render_sbatch(spec, run_dir, code_dir, config_path)

    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output folder
    save_config(config, config_path)
    snapshot_code(code_dir)
    script_path.write_text(script, encoding="utf-8")
    if dry_run:
        print(script, end="")
        print(f"# dry run: wrote {script_path} (not submitted); submit it with: sbatch {script_path}")
    else:
        job_id = submit(script_path, sbatch or "sbatch")
        print(f"submitted job {job_id}; log: {run_dir / 'slurm'}/{job_name(spec, run_dir)}-{job_id}.out")
    return run_dir


def submit(script_path: Path, sbatch: str = "sbatch") -> str:
    """Run sbatch on the script; return the job id. The id is also appended to <run_dir>/slurm/jobs.txt."""
    done = subprocess.run([sbatch, "--parsable", str(script_path)], capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise LaunchError(f"sbatch failed (exit {done.returncode}): {message[-1] if message else 'no output'}")
    job_id = done.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
    with open(script_path.parent / "slurm" / "jobs.txt", "a", encoding="utf-8") as jobs:
        jobs.write(job_id + "\n")
    return job_id
