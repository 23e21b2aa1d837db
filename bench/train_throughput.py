"""Training throughput: `mmpretrain train` against open_clip_train, side by side, alternating, several rounds.

    python bench/train_throughput.py                          # the CPU rows, 3 rounds (about 40 min on 2 cores)
    python bench/train_throughput.py --rows tiny-1p --rounds 1 --quick      # a smoke run (about 2 min)

Each row is one setting both trainers run identically: the same model JSON (configs/models, registered with
open_clip's factory in open_clip_train's process by bench/open_clip_train_entry.py), the same generated shards
(JPEG + caption, resampled with replacement on both sides, so neither runs out or pays an epoch boundary), the same
per-rank batch, DataLoader workers, image size, precision, ClipLoss (open_clip: `--local-loss --gather-with-grad`
when distributed, the setting it recommends; ours: the default gathered ClipLoss), AdamW (lr, betas, eps, weight
decay, warm-up), gradient clipping at norm 1 and no checkpoint or evaluation inside the timed steps. Every job is a
fresh subprocess (torchrun with N processes when the row has N): ours is `mmpretrain train` (one process) or
`torchrun -m mmpretrain.cli train` with `engine.name=deepspeed` and the row's ZeRO stage (N processes); theirs is
open_clip_train's `main` (DDP over gloo for N processes).

What is timed: each trainer's own step windows after `--warmup-steps` steps, from its log: ours
`samples_per_s` in metrics.jsonl (wall time of `train.log_every` steps), theirs the `Batch (t)` average of
`--log-every-n-steps` steps (the time from one step's end to the next's, data wait included). Both are wall time
between step ends, so start-up, the shuffle buffer's fill, the final checkpoint and the exit are outside it. A job's
figure is samples over seconds across its timed windows. Rounds alternate the variants' order (ours first in even
rounds, theirs in odd ones); the table gives medians over rounds and the per-round ratios ours / theirs (median,
min, max). Also per job: the peak RSS of its largest process (wait4's ru_maxrss), its CPU seconds, the 1-minute load
average before it started, and the model's FLOPs per sample (forward + backward of both towers and the loss, counted
by torch.utils.flop_counter on the real towers) times samples/s: achieved FLOP/s, and MFU on a GPU where the peak for
the dtype is known (`--peak-tflops` otherwise).

Variants (`--variants`): `ours` and `open_clip` are each trainer's defaults; the ablations explain a gap:
`ours-system-malloc` (train.malloc=system: glibc's adaptive thresholds), `ours-unfused-adamw` (optim.fused=false:
torch's per-tensor AdamW, as open_clip_train runs it), `open_clip-tuned-malloc` (our malloc setting applied to
open_clip_train), `ours-synthetic` (data.synthetic: one batch made on the device, reused:
the model-only ceiling).

GPU rows (`vitb32-gpu`, `vitb16-gpu`: 224 px, bf16, batch 256 per GPU, open_clip_train with `--precision amp_bf16`)
are defined for when a GPU is lent; they have not been run on this project's CPU machines.
Writes `bench/results/train_throughput.json` (every job's row) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Row:
    """One setting both trainers run."""

    model: str
    procs: int = 1
    batch: int = 128               # per process
    workers: int = 2               # DataLoader workers per process
    image_px: int = 64             # the side of the generated JPEGs (the model config sets the training size)
    zero: Optional[int] = None     # ours with N processes: DeepSpeed ZeRO stage (0, 1, 2)
    precision: str = "fp32"        # fp32 | bf16
    gpu: bool = False
    note: str = ""


ROWS: dict[str, Row] = {
    "tiny-1p": Row("mmp-tiny-rn", note="8.1M params, 64 px"),
    "tiny-2p-zero0": Row("mmp-tiny-rn", procs=2, workers=1, zero=0),
    "tiny-2p-zero1": Row("mmp-tiny-rn", procs=2, workers=1, zero=1),
    "tiny-2p-zero2": Row("mmp-tiny-rn", procs=2, workers=1, zero=2),
    "vits-1p": Row("mmp-vit-s16-64", batch=32, note="ViT-S/16 towers at 64 px, text 32 tokens"),
    "vits-2p-zero0": Row("mmp-vit-s16-64", procs=2, batch=32, workers=1, zero=0),
    "vits-2p-zero1": Row("mmp-vit-s16-64", procs=2, batch=32, workers=1, zero=1),
    "vitb32-gpu": Row("ViT-B-32", batch=256, workers=8, image_px=256, precision="bf16", gpu=True),
    "vitb16-gpu": Row("ViT-B-16", batch=256, workers=8, image_px=256, precision="bf16", gpu=True),
}
CPU_ROWS = [name for name, row in ROWS.items() if not row.gpu]
VARIANTS = ["ours", "open_clip", "ours-system-malloc", "ours-unfused-adamw", "open_clip-tuned-malloc",
            "ours-synthetic"]
PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU (vendor data sheets)


# ------------------------------------------------------------------------------------------------ the shards

CAPTION_WORDS = ("red green blue yellow purple orange black white circle square triangle disc bar ring small "
                 "large bright dark striped plain photo of a on the left right top bottom").split()


def make_shards(out: Path, samples: int, per_shard: int, side: int, seed: int = 0) -> list[str]:
    """JPEG + caption shards (our ShardWriter: the layout both readers take): noisy blocks of colour, so JPEG
    decode costs what a photo of that size costs, and random captions of 6-14 words."""
    import numpy as np
    from PIL import Image

    from mmpretrain.data.shard_writer import ShardWriter

    params = {"samples": samples, "per_shard": per_shard, "side": side, "seed": seed}
    if (out / "params.json").exists() and json.loads((out / "params.json").read_text()) == params:
        return sorted(str(p) for p in out.glob("*.tar"))  # a --scratch folder's shards from an earlier run
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    with ShardWriter(out, per_shard, prefix="bench") as writer:
        for index in range(samples):
            base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            pixels = np.kron(base, np.ones((side // 4 + 1, side // 4 + 1, 1), dtype=np.uint8))[:side, :side]
            noise = rng.integers(-24, 25, size=pixels.shape)
            image = Image.fromarray(np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            caption = " ".join(words.choice(CAPTION_WORDS) for _ in range(words.randint(6, 14)))
            writer.write(f"{index:07d}", buffer.getvalue(), "jpg", caption)
    (out / "params.json").write_text(json.dumps(params))
    return sorted(str(p) for p in out.glob("*.tar"))


# ------------------------------------------------------------------------------------------------ the jobs

@dataclass
class Job:
    row: str
    variant: str
    round: int
    samples_per_s: Optional[float] = None
    windows: list[float] = field(default_factory=list)   # samples/s of each timed window
    data_wait_fraction: Optional[float] = None             # open_clip: Data (t) / Batch (t) over the timed windows
    peak_rss_mib: float = 0.0
    cpu_s: float = 0.0
    minor_faults: int = 0                                  # the job's processes', start-up included
    wall_s: float = 0.0
    load_before: float = 0.0
    returncode: int = 0
    error: str = ""


def _env(row: Row, variant: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if variant == "open_clip-tuned-malloc":
        env["MMP_BENCH_MALLOC"] = "tuned"
    if row.procs > 1:
        env["OMP_NUM_THREADS"] = "1"  # what torchrun sets by default with several processes, stated for both
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _torchrun(procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]


def ours_command(row: Row, variant: str, shards: list[str], work: Path, args: argparse.Namespace) -> list[str]:
    steps = args.warmup_steps + args.timed_steps
    config = work / "bench.yaml"  # the settings are all overrides, after a config that only names the run
    config.write_text("run_name: bench\n")
    overrides = [
        f"output_dir={work}", f"model.name={row.model}", "model.towers=[image,text]",
        f"data.train={json.dumps(shards)}", "data.resampled=true", f"data.batch_size={row.batch}",
        f"data.num_workers={row.workers}", f"data.shuffle_buffer={args.shuffle_buffer}",
        f"optim.lr={args.lr}", "optim.weight_decay=0.2", "optim.betas=[0.9,0.98]", "optim.eps=1e-6",
        f"optim.warmup_steps={args.warmup_steps}", "optim.grad_clip=1.0", f"train.steps={steps}",
        f"train.log_every={args.log_every}", "train.checkpoint_every=0", "train.progress=false",
        f"train.precision={row.precision}", f"train.seed={args.seed}", "eval.tasks=[]",
        "train.device=" + ("cuda" if row.gpu else "cpu"),
    ]
    if variant == "ours-system-malloc":
        overrides.append("train.malloc=system")
    if variant == "ours-unfused-adamw":
        overrides.append("optim.fused=false")
    if variant == "ours-synthetic":
        overrides += ["data.synthetic=true", "data.train=[]"]
    if row.procs > 1:
        overrides += ["engine.name=deepspeed", f"engine.deepspeed_config=zero{row.zero}"]
        return [*_torchrun(row.procs), "-m", "mmpretrain.cli", "train", str(config), "--overwrite",
                *overrides]
    return [sys.executable, "-m", "mmpretrain.cli", "train", str(config), "--overwrite", *overrides]


def open_clip_command(row: Row, shards: list[str], work: Path, args: argparse.Namespace) -> list[str]:
    steps = args.warmup_steps + args.timed_steps
    flags = [
        "--train-data", "::".join(shards), "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(steps * row.batch * row.procs), "--epochs", "1",
        "--batch-size", str(row.batch), "--workers", str(row.workers), "--model", row.model,
        "--lr", str(args.lr), "--wd", "0.2", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
        "--warmup", str(args.warmup_steps), "--grad-clip-norm", "1.0", "--seed", str(args.seed),
        "--precision", "amp_bf16" if row.precision == "bf16" else "fp32",
        "--log-every-n-steps", str(args.log_every), "--logs", str(work), "--name", "bench",
        "--report-to", "", "--save-frequency", "0", "--device", "cuda" if row.gpu else "cpu",
    ]
    entry = str(REPO / "bench" / "open_clip_train_entry.py")
    if row.procs == 1:
        return [sys.executable, entry, *flags]
    flags += ["--local-loss", "--gather-with-grad", "--dist-backend", "nccl" if row.gpu else "gloo"]
    flags_file = work / "open_clip_flags.json"  # not on torchrun's command line: its parser takes --logs as its own
    flags_file.write_text(json.dumps(flags))
    return [*_torchrun(row.procs), entry, str(flags_file)]


def run_job(command: list[str], env: dict[str, str], log_path: Path, timeout: float) -> tuple[int, float, float,
                                                                                               float, int]:
    """(return code, wall s, CPU s, peak RSS MiB of the largest process in the job's tree, minor page faults)."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        # A timeout, or this script stopped, takes the job's whole process tree with it (torchrun's ranks, the
        # DataLoader workers) instead of leaving it to disturb the next job.
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:  # wait4 (not Popen.wait): the child's resource use, its waited-for descendants' included
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    _kill_tree(proc.pid)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.2)
        except BaseException:
            _kill_tree(proc.pid)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024, usage.ru_minflt)


def _kill_tree(pid: int) -> None:
    """The job and every process under it: torchrun starts each rank in a session of its own, so killing the
    job's process group alone would leave the ranks training beside the next job."""
    import psutil

    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def ours_windows(work: Path, samples_per_step: int, warmup_steps: int) -> list[tuple[int, float]]:
    """(steps, seconds) of each logged window that starts after the warm-up."""
    rows = [json.loads(line) for line in (work / "bench" / "metrics.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if "samples_per_s" in r]
    windows, previous = [], 0
    for row in rows:
        steps = row["step"] - previous
        if previous >= warmup_steps:
            windows.append((steps, steps * samples_per_step / row["samples_per_s"]))
        previous = row["step"]
    return windows


LOG_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)")


def open_clip_windows(work: Path, samples_per_step: int, warmup_steps: int) -> tuple[list[tuple[int, float]],
                                                                                     float]:
    """(steps, seconds) of each logged window that starts after the warm-up, and the data-wait fraction."""
    text = (work / "bench" / "out.log").read_text()
    windows, waits, previous = [], 0.0, 0
    for match in LOG_LINE.finditer(text):
        done = int(match.group(1)) // samples_per_step
        steps = done - previous
        data_s, batch_s = float(match.group(2)), float(match.group(3))
        if previous >= warmup_steps and steps > 0:
            windows.append((steps, steps * batch_s))
            waits += steps * data_s
        previous = done
    total = sum(s for _, s in windows)
    return windows, (waits / total if total else float("nan"))


def measure(name: str, row: Row, variant: str, round_index: int, shards: list[str], scratch: Path,
            args: argparse.Namespace) -> Job:
    job = Job(name, variant, round_index)
    work = scratch / f"{name}-{variant}-{round_index}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    job.load_before = round(os.getloadavg()[0], 2)
    ours = variant.startswith("ours")
    command = ours_command(row, variant, shards, work, args) if ours else open_clip_command(row, shards, work, args)
    log_path = work / "job.log"
    outcome = run_job(command, _env(row, variant), log_path, args.job_timeout)
    job.returncode, job.wall_s, job.cpu_s, job.peak_rss_mib, job.minor_faults = outcome
    samples_per_step = row.batch * row.procs
    try:
        if job.returncode != 0:
            raise RuntimeError(f"exit {job.returncode}")
        if ours:
            windows = ours_windows(work, samples_per_step, args.warmup_steps)
        else:
            windows, job.data_wait_fraction = open_clip_windows(work, samples_per_step, args.warmup_steps)
        if not windows:
            raise RuntimeError("no timed window in the log")
        job.windows = [steps * samples_per_step / seconds for steps, seconds in windows]
        job.samples_per_s = sum(s for s, _ in windows) * samples_per_step / sum(t for _, t in windows)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        job.error = f"{e}: " + " | ".join(tail)
    if not args.keep:
        shutil.rmtree(work / "bench", ignore_errors=True)
    return job


# ------------------------------------------------------------------------------------------------ FLOPs

@functools.lru_cache(maxsize=None)  # rows share models: each is built and counted once
def flops_per_sample(model_name: str) -> float:
    """Forward + backward FLOPs per sample of both towers and the contrastive loss (torch.utils.flop_counter,
    which counts matmuls and convolutions: the model FLOPs MFU is defined on), on the real towers."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    open_clip.add_model_config(REPO / "configs" / "models")
    model = open_clip.create_model(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    batch = 4
    images = torch.randn(batch, 3, *size)
    context = open_clip.get_model_config(model_name)["text_cfg"].get("context_length", 77)
    texts = torch.randint(1, 1000, (batch, context))
    with FlopCounterMode(display=False) as counter:
        image_features, text_features, scale = model(images, texts)[:3]
        logits = scale * image_features @ text_features.T
        labels = torch.arange(batch)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
    return counter.get_total_flops() / batch


def peak_tflops(args: argparse.Namespace, precision: str) -> Optional[float]:
    if args.peak_tflops:
        return args.peak_tflops
    import torch

    if not torch.cuda.is_available() or precision != "bf16":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS_BF16.items() if k in name), None)


# ------------------------------------------------------------------------------------------------ the table

def summarise(jobs: list[Job], flops: dict[str, float], peaks: dict[str, Optional[float]]) -> list[dict[str, Any]]:
    summary = []
    for name in dict.fromkeys(j.row for j in jobs):
        mine = [j for j in jobs if j.row == name and j.samples_per_s]
        theirs = {j.round: j.samples_per_s for j in mine if j.variant == "open_clip"}
        for variant in dict.fromkeys(j.variant for j in mine):
            runs = [j for j in mine if j.variant == variant]
            rates = [j.samples_per_s for j in runs]
            ratios = [j.samples_per_s / theirs[j.round] for j in runs if j.round in theirs]
            median = statistics.median(rates)
            achieved = median * flops[name] if name in flops else None
            waits = [j.data_wait_fraction for j in runs if j.data_wait_fraction is not None]
            summary.append({
                "row": name, "variant": variant, "rounds": len(runs), "samples_per_s": median,
                "ratio_median": statistics.median(ratios) if ratios else None,
                "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                "peak_rss_mib": statistics.median(j.peak_rss_mib for j in runs),
                "gflop_per_sample": flops[name] / 1e9 if name in flops else None,
                "achieved_tflops": achieved / 1e12 if achieved else None,
                "mfu": achieved / (peaks[name] * 1e12) if achieved and peaks.get(name) else None,
                "data_wait_fraction": statistics.median(waits) if waits else None,
            })
    return summary


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| row | variant | rounds | samples/s (median) | x open_clip (median [min, max]) | peak RSS MiB "
             "| GFLOP/sample | achieved TFLOP/s | MFU |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]

    def number(value: Optional[float], fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for s in summary:
        ratio = "-" if s["ratio_median"] is None else (f"{s['ratio_median']:.3f} [{s['ratio_min']:.3f}, "
                                                        f"{s['ratio_max']:.3f}]")
        lines.append(f"| {s['row']} | {s['variant']} | {s['rounds']} | {s['samples_per_s']:.1f} | {ratio} | "
                     f"{s['peak_rss_mib']:.0f} | {number(s['gflop_per_sample'], '.2f')} | "
                     f"{number(s['achieved_tflops'], '.4f')} | {number(s['mfu'], '.1%')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=CPU_ROWS, choices=list(ROWS))
    parser.add_argument("--variants", nargs="+", default=["ours", "open_clip"], choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps before the timed windows")
    parser.add_argument("--timed-steps", type=int, default=30, help="steps timed (a multiple of --log-every)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4096, help="generated samples (resampled: any count works)")
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="ours; open_clip_train's is 5000 (fixed)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for the row's dtype (GPU MFU)")
    parser.add_argument("--job-timeout", type=float, default=1800)
    parser.add_argument("--wait-load", type=float, help="before each job, wait (at most --wait-max s) for the "
                        "1-minute load average to drop below this")
    parser.add_argument("--wait-max", type=float, default=300)
    parser.add_argument("--scratch", type=Path, help="shards and run folders (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep each job's run folder")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 warm-up + 10 timed steps, 1 round")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "train_throughput.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup_steps, args.timed_steps, args.log_every, args.rounds = 4, 10, 2, 1
    if args.warmup_steps % args.log_every or args.timed_steps % args.log_every or args.timed_steps <= 0:
        parser.error("--warmup-steps and --timed-steps must be multiples of --log-every (and timed > 0)")
    if "open_clip" not in args.variants:
        parser.error("--variants needs open_clip: every ratio is against it, in the same round")
    return args


def wait_for_quiet(limit: Optional[float], longest: float) -> None:
    deadline = time.monotonic() + longest
    while limit is not None and os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill runs the clean-up (the job's group dies too)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="mmp-train-bench-"))
    shard_sets: dict[int, list[str]] = {}
    jobs: list[Job] = []
    flops = {name: flops_per_sample(ROWS[name].model) for name in args.rows}
    peaks = {name: peak_tflops(args, ROWS[name].precision) for name in args.rows}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        for name in args.rows:
            row = ROWS[name]
            if row.image_px not in shard_sets:
                shard_sets[row.image_px] = make_shards(scratch / f"shards{row.image_px}", args.samples,
                                                       args.per_shard, row.image_px, args.seed)
            for round_index in range(args.rounds):
                order = args.variants if round_index % 2 == 0 else list(reversed(args.variants))
                for variant in order:
                    wait_for_quiet(args.wait_load, args.wait_max)
                    job = measure(name, row, variant, round_index, shard_sets[row.image_px], scratch, args)
                    jobs.append(job)
                    figure = f"{job.samples_per_s:.1f} samples/s" if job.samples_per_s else f"FAILED {job.error}"
                    print(f"# {name} round {round_index} {variant}: {figure} (load {job.load_before}, "
                          f"{job.wall_s:.0f} s, peak RSS {job.peak_rss_mib:.0f} MiB)", flush=True)
                    _write(args.json, args, started, jobs, flops, peaks)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(markdown(summarise(jobs, flops, peaks)))
    if any(j.error for j in jobs):
        sys.exit(1)


def _write(path: Path, args: argparse.Namespace, started: str, jobs: list[Job], flops: dict[str, float],
           peaks: dict[str, Optional[float]]) -> None:
    """After every job, so a stopped sweep keeps what it measured."""
    import platform

    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path.write_text(json.dumps({
        "started": started, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": settings, "rows": {name: asdict(ROWS[name]) for name in args.rows},
        "summary": summarise(jobs, flops, peaks), "jobs": [asdict(j) for j in jobs]}, indent=1))


if __name__ == "__main__":
    main()
