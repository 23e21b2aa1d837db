"""launch/: the sbatch script (golden file, bash syntax, and its signal/requeue flow run against fake SLURM
commands), the run directory prepare_run writes, the local torchrun command, and the `mmpretrain launch` CLI.

Refresh the golden file after a deliberate template change: MMPRETRAIN_UPDATE_GOLDEN=1 pytest tests/test_launch.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmpretrain.cli import PREEMPTED_LINE
from mmpretrain.cli import main as cli_main
from mmpretrain.config import load_config
from mmpretrain.errors import ConfigError
from mmpretrain.launch import cli
from mmpretrain.launch.local import build_local_command, run_local
from mmpretrain.launch.slurm import TEMPLATE, LaunchError, SlurmSpec, prepare_run, render_sbatch, time_to_seconds

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden") / "sbatch_2x8.sh"
FULL_SPEC = SlurmSpec(nodes=2, gpus_per_node=8, cpus_per_task=96, time="2-00:00:00", partition="gpu",
                      account="proj", qos="high", job_name="clip-b16", signal_seconds=600,
                      extra_sbatch=["--exclusive"])


def _render(spec: SlurmSpec, root: Path = Path("/cluster")) -> str:
    run_dir = root / "runs" / "clip-b16"
    return render_sbatch(spec, run_dir, run_dir / "code", run_dir / "config.yaml", workdir=root / "src",
                         python=str(root / "venv/bin/python"))


def _demo_overrides(tmp_path: Path) -> list[str]:
    # Several processes need the DeepSpeed engine; the launchers refuse engine.name=local up front.
    return [f"output_dir={tmp_path.resolve()}", f"data_root={tmp_path.resolve()}", "engine.name=deepspeed"]


def _fake_bin(tmp_path: Path) -> Path:
    """srun, scontrol and sbatch stand-ins that record how they were called into tmp_path/log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    scripts = {
        # srun: record args, cwd and PYTHONPATH; print FAKE_SRUN_SAYS (the trainer's last words, into the job log)
        # and exit with FAKE_SRUN_EXIT, or run until USR1 ("wait") and then exit 1, as torchrun does.
        "srun": f"""printf '%s\\n' "$@" > {log}/srun_args; echo "$PWD" > {log}/srun_cwd
echo "$PYTHONPATH" > {log}/srun_pythonpath
says() {{ [[ -z ${{FAKE_SRUN_SAYS:-}} ]] || echo "$FAKE_SRUN_SAYS"; }}
trap 'echo USR1 > {log}/srun_signal; kill $SLEEP; says; exit 1' USR1
touch {log}/srun_started
if [[ $FAKE_SRUN_EXIT == wait ]]; then sleep 20 & SLEEP=$!; wait $SLEEP; exit 0; fi
says
exit "$FAKE_SRUN_EXIT\"""",
        "scontrol": f"""if [[ $1 == show ]]; then printf 'node-a\\nnode-b\\n'
else echo "$@" >> {log}/scontrol; fi""",
        "sbatch": f"""echo "$@" >> {log}/sbatch; echo '777;cluster'""",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_render_matches_golden_file():
    rendered = _render(FULL_SPEC)
    if os.environ.get("MMPRETRAIN_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(rendered, encoding="utf-8")
    assert rendered == GOLDEN.read_text(encoding="utf-8")


def test_rendered_script_has_the_slurm_contract_and_valid_bash_syntax(tmp_path):
    script = _render(FULL_SPEC)
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=96", "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --exclusive", "#SBATCH --requeue",
                 "#SBATCH --output=/cluster/runs/clip-b16/slurm/%x-%j.out", "#SBATCH --signal=B:USR1@600",
                 "#SBATCH --open-mode=append", "set -euo pipefail"]:
        assert line + "\n" in script, line
    assert "-m mmpretrain.cli train /cluster/runs/clip-b16/config.yaml --resume latest &" in script
    assert "${" not in script.replace("${PYTHONPATH:+", "").replace("${SLURM_RESTART_COUNT", "")
    path = tmp_path / "submit.sbatch"
    path.write_text(script)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_optional_sbatch_lines_are_omitted_when_not_given():
    script = _render(SlurmSpec(nodes=1, gpus_per_node=4))
    for option in ("--partition", "--account", "--qos", "--exclusive"):
        assert option not in script
    assert "#SBATCH --cpus-per-task=32\n#SBATCH --time=24:00:00\n# %x-%j" in script  # no blank line left behind
    assert "#SBATCH --job-name=clip-b16" in script  # defaults to the run directory's name


@pytest.mark.parametrize("spec, message", [
    (SlurmSpec(nodes=0), "nodes"),
    (SlurmSpec(time="1:2:3:4"), "--time"),
    (SlurmSpec(time="00:04:00", signal_seconds=300), "signal_seconds"),
    (SlurmSpec(partition="gpu\n#SBATCH --x"), "partition"),
    (SlurmSpec(extra_sbatch=["exclusive"]), "extra sbatch"),
])
def test_bad_spec_is_a_launch_error_naming_the_field(spec, message):
    with pytest.raises(LaunchError, match=message):
        spec.validate()


def test_time_formats_convert_to_seconds():
    assert time_to_seconds("30") == 1800
    assert time_to_seconds("01:30") == 90
    assert time_to_seconds("02:00:00") == 7200
    assert time_to_seconds("1-12") == 36 * 3600
    assert time_to_seconds("1-00:00:05") == 86405


def _run_script(tmp_path: Path, srun_exit: str, send_usr1: bool, says: str = "",
                earlier_log: str = "") -> tuple[int, Path, str]:
    """Run a rendered script under fake srun/scontrol, its output appended to the job log as SLURM does (after
    `earlier_log`, an earlier start's lines); optionally send it SLURM's USR1 warning mid-run. Returns the exit
    code, the fake commands' record folder and this start's part of the job log."""
    bin_dir = _fake_bin(tmp_path)
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "code").mkdir(parents=True)
    (run_dir / "slurm").mkdir()
    (run_dir / "code" / "VERSION").write_text("commit: abc\n")
    job_log = run_dir / "slurm" / "r-4242.out"  # --output=<run_dir>/slurm/%x-%j.out
    job_log.write_text(earlier_log)
    script = run_dir / "submit.sbatch"
    script.write_text(render_sbatch(SlurmSpec(nodes=2, gpus_per_node=8), run_dir, run_dir / "code",
                                    run_dir / "config.yaml", workdir=tmp_path, python="python"))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SRUN_EXIT": srun_exit,
           "FAKE_SRUN_SAYS": says, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "r", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "64"}
    env.pop("PYTHONPATH", None)
    with open(job_log, "a") as log_file:
        proc = subprocess.Popen(["bash", str(script)], env=env, stdout=log_file, stderr=subprocess.STDOUT)
        if send_usr1:
            deadline = time.monotonic() + 10
            while not (tmp_path / "log" / "srun_started").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=20)
    return proc.returncode, tmp_path / "log", job_log.read_text()[len(earlier_log):]


PREEMPTED = f"{PREEMPTED_LINE}: preempted by SIGUSR1 after step 7; checkpoint saved, exit 124 to be requeued"


def test_usr1_is_forwarded_to_srun_and_the_job_requeues_itself(tmp_path):
    returncode, log, output = _run_script(tmp_path, srun_exit="wait", send_usr1=True, says=PREEMPTED)
    assert (log / "srun_signal").read_text().strip() == "USR1"
    assert (log / "scontrol").read_text().split() == ["requeue", "4242"]
    assert returncode == 0
    assert "requeueing job 4242 (exit 1)" in output  # torchrun's 1; the trainer's line decided
    args = (log / "srun_args").read_text().splitlines()
    assert "--rdzv-endpoint=node-a:24242" in args and "--nproc-per-node=8" in args
    assert args[-4:] == ["train", str(tmp_path / "runs/r/config.yaml"), "--resume", "latest"]
    # Runs where it was submitted, importing the code snapshot first.
    assert (log / "srun_cwd").read_text().strip() == str(tmp_path)
    assert (log / "srun_pythonpath").read_text().strip() == str(tmp_path / "runs/r/code")


def test_usr1_as_training_finishes_does_not_requeue(tmp_path):
    # The warning came, but the trainer had done its last step: it saved no "preempted" checkpoint, so the
    # job must end (with torchrun's exit status) instead of going round the queue again.
    returncode, log, output = _run_script(tmp_path, srun_exit="wait", send_usr1=True, says="run directory: /r")
    assert (log / "srun_signal").read_text().strip() == "USR1"
    assert not (log / "scontrol").exists()
    assert returncode == 1
    assert "not requeueing job 4242 (exit 1)" in output


@pytest.mark.parametrize("srun_exit, says, requeued, returncode", [
    ("124", "", True, 0),                       # the trainer's own exit code reached the script
    ("1", PREEMPTED, True, 0),                  # torchrun's 1 for it (e.g. SIGTERM preemption): the line decides
    ("0", "run directory: /r", False, 0),
    ("1", "Traceback: RuntimeError", False, 1),  # a crash is not requeued
    ("3", "", False, 3),
])
def test_only_a_preempted_trainer_is_requeued(tmp_path, srun_exit, says, requeued, returncode):
    got, log, _ = _run_script(tmp_path, srun_exit=srun_exit, send_usr1=False, says=says)
    assert got == returncode
    assert (log / "scontrol").exists() == requeued


def test_an_earlier_starts_preempted_line_does_not_requeue_a_crash(tmp_path):
    # The log is appended to across requeues: the line from the start before this one must not count.
    earlier = f"{PREEMPTED}\nrequeueing job 4242 (exit 1)\n"
    got, log, output = _run_script(tmp_path, srun_exit="1", send_usr1=False, says="Traceback: RuntimeError",
                                   earlier_log=earlier)
    assert got == 1 and not (log / "scontrol").exists()
    assert PREEMPTED not in output and "Traceback" in output


def test_the_trainers_preempted_line_is_the_one_the_script_looks_for(monkeypatch, capsys):
    import mmpretrain.train
    from mmpretrain.engine.preemption import REQUEUE_EXIT_CODE, Preempted

    def preempted_train(*args, **kwargs):
        raise Preempted(7, "SIGUSR1")

    monkeypatch.setattr(mmpretrain.train, "train", preempted_train)
    assert cli_main(["train", "demo"]) == REQUEUE_EXIT_CODE
    assert capsys.readouterr().err.startswith(PREEMPTED_LINE + ": preempted by SIGUSR1 after step 7")
    assert f'grep -qF "{PREEMPTED_LINE}"' in TEMPLATE.read_text()


def test_dry_run_writes_the_run_directory_without_calling_sbatch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_bin(tmp_path)}:{os.environ['PATH']}")
    overrides = _demo_overrides(tmp_path)
    run_dir = prepare_run("demo", overrides, SlurmSpec(nodes=2, gpus_per_node=8), dry_run=True)
    assert run_dir == tmp_path.resolve() / "demo"
    assert load_config(run_dir / "config.yaml") == load_config(REPO / "configs/demo.yaml", overrides)
    assert (run_dir / "code/mmpretrain/__init__.py").is_file()
    assert (run_dir / "code/configs/demo.yaml").is_file()
    assert not list((run_dir / "code").rglob("__pycache__"))
    version = (run_dir / "code/VERSION").read_text()
    assert "commit: " in version and "dirty: " in version
    script = (run_dir / "submit.sbatch").read_text()
    assert f"train {run_dir}/config.yaml --resume latest" in script
    assert (run_dir / "slurm").is_dir()  # SLURM will not create the log folder itself
    assert not (tmp_path / "log/sbatch").exists()
    assert script in capsys.readouterr().out


def test_submit_calls_sbatch_and_records_the_job_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_bin(tmp_path)}:{os.environ['PATH']}")
    run_dir = prepare_run("demo", _demo_overrides(tmp_path), SlurmSpec(gpus_per_node=1), dry_run=False)
    assert (tmp_path / "log/sbatch").read_text().split() == ["--parsable", str(run_dir / "submit.sbatch")]
    assert (run_dir / "slurm/jobs.txt").read_text() == "777\n"
    assert "submitted job 777" in capsys.readouterr().out


def test_errors_come_before_anything_is_written(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="train.stepz"):
        prepare_run("demo", [*_demo_overrides(tmp_path), "train.stepz=1"], SlurmSpec(), dry_run=True)
    with pytest.raises(LaunchError, match="nodes"):
        prepare_run("demo", _demo_overrides(tmp_path), SlurmSpec(nodes=0), dry_run=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch anywhere
    with pytest.raises(LaunchError, match="sbatch not found"):
        prepare_run("demo", _demo_overrides(tmp_path), SlurmSpec(), dry_run=False)
    assert not (tmp_path / "demo").exists()


def test_a_run_with_checkpoints_is_not_prepared_again(tmp_path):
    (tmp_path / "demo" / "checkpoints").mkdir(parents=True)
    with pytest.raises(LaunchError, match="already holds a run"):
        prepare_run("demo", _demo_overrides(tmp_path), SlurmSpec(), dry_run=True)
    assert not (tmp_path / "demo" / "code").exists()


def test_local_command_is_torchrun_standalone_running_mmpretrain_train():
    command = build_local_command("demo", ["train.steps=5"], 4, ["--resume", "latest"], python="py")
    assert command == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                       "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                       "-m", "mmpretrain.cli", "train", "demo", "train.steps=5", "--resume", "latest"]
    assert build_local_command("demo", [], 1)[0] == sys.executable
    with pytest.raises(ValueError):
        build_local_command("demo", [], 0)


def test_local_run_validates_the_config_before_starting_processes(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun started"))
    with pytest.raises(ConfigError):
        run_local("demo", ["train.stepz=1"], 2)


def test_a_signal_to_the_local_launcher_reaches_torchrun_and_the_launcher_waits(tmp_path):
    """SIGTERM to `mmpretrain launch local` used to leave torchrun and training running as orphans: now the
    launcher forwards SIGTERM / SIGUSR1 to torchrun and returns its exit code once it has exited."""
    import signal
    import time

    marker = tmp_path / "child-signalled"
    child = ("import signal, sys, time, pathlib\n"
             f"def done(*a): pathlib.Path({str(marker)!r}).write_text('x'); sys.exit(124)\n"
             "signal.signal(signal.SIGTERM, done)\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    launcher = ("import sys\n"
                "import mmpretrain.launch.local as local\n"
                f"local.build_local_command = lambda *a, **k: [sys.executable, '-c', {child!r}]\n"
                "sys.exit(local.run_local('demo', ['train.steps=5'], 1))\n")
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    lines = []
    while "ready" not in lines:
        lines.append(proc.stdout.readline().strip())
    time.sleep(0.5)  # the launcher installs its handlers right after starting the child
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 124  # the child's exit code, after the child exited
    assert marker.exists()


def test_cli_slurm_dry_run_returns_0(tmp_path, capsys):
    argv = ["slurm", "demo", "--nodes", "2", *_demo_overrides(tmp_path), "--gpus-per-node", "8", "--dry-run",
            "--partition", "gpu"]
    assert cli.main(argv) == 0
    assert "#SBATCH --partition=gpu" in (tmp_path / "demo/submit.sbatch").read_text()
    assert "dry run" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["slurm", "demo", "--gpus-per-node", "8"], "--nodes"),
    (["slurm", "demo", "--nodes", "1", "--gpus-per-node", "8", "--time", "soon", "--dry-run"], "--time"),
    (["local", "demo", "--nproc", "2", "train.stepz=1"], "train.stepz"),
    (["local", "demo", "--nproc", "0"], "--nproc"),
    (["cluster", "demo"], "unknown command"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_multi_process_launch_of_a_local_engine_config_is_refused(tmp_path):
    spec = SlurmSpec(nodes=2, gpus_per_node=8)
    with pytest.raises(ValueError, match="engine.name=deepspeed"):
        prepare_run("demo", [f"output_dir={tmp_path}", f"data_root={tmp_path}"], spec, dry_run=True)
    assert not any(tmp_path.iterdir())  # refused before anything was written
