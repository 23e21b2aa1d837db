"""Curation throughput: Ray's overhead on the embed stage, and how the analyse phase scales with Ray's CPUs.

    python bench/curation_throughput.py --wait-load 0.5       # defaults: about 5 minutes on 2 quiet cores
    python bench/curation_throughput.py --quick --json /tmp/ct.json    # smoke run, under a minute

Two measurements, side by side in one run, reported as ratios (the script never passes or fails on a time):

1. Embed overhead. N batches (`--embed SPEC@N`) of `--batch-size` generated photo-like JPEGs (decoded and put through
   each model's eval transform once, before any timing) are embedded three ways, one after the other, with
   `--threads` torch threads each:
   - bare: what `curate.analyse.Embedder` computes for a block, on ready tensors: `model.encode("image", x,
     normalize=True)`, the captions tokenized and `model.encode("text", ...)`, and the image-caption cosine, under
     `torch.inference_mode()`;
   - embedder: an `Embedder` called in-process on the same batches as Arrow tables in its input layout (the layout
     `analyse.read_and_prepare` yields: `pixels` a flattened FixedSizeList column, `embed` a bool column), i.e.
     the bare work plus Embedder's own Arrow <-> numpy conversions;
   - ray: a local Ray (`ray.init(num_cpus=threads)`), `ray.data.from_arrow(tables)` -> `map_batches(Embedder,
     batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=1), num_cpus=threads)`, iterated by the
     driver with `iter_batches(batch_size=None)`.
   Bare and embedder run in a child process at Ray's worker niceness (`--nice`, 15 as Ray sets its workers'), so
   that all sides meet other load at the same priority; Ray's driver (this process) and daemons stay at nice 0,
   as in `mmpretrain curate`. Even so, figures taken beside other work mean little: beside a 2-thread training
   job, 2-thread batches of the tiny model took either ~0.04 s or ~1.4 s, in a Ray actor or not. Run it on a
   quiet machine (`--wait-load 0.5`).
   The first batch is the warm-up everywhere and is not timed. Bare and embedder time batches 2..N with
   `time.perf_counter`. Ray Data's actors do not outlive one execution, so actor start-up and model load cannot
   be taken out by a warm-up run, and the driver's `iter_batches` arrival times are no clock either: Ray hands
   finished blocks over in bursts (two ViT-B-32 blocks seconds apart in the actor arrived 0.00 s apart). So the
   actor is an `Embedder` subclass that appends each call's wall-clock start and end (`time.time()`) as two
   columns, and the ray time is from the end of the first call to the end of the last: the calls on batches 2..N
   plus everything Ray does between them (fetching and formatting the next block, returning the previous one),
   but not actor start-up, the model load nor batch 1 (reported beside it: `first_call_start_s` from execution
   start, `first_output_s`, `whole_s`), and not the hand-over of the last block to the driver. The part of the
   ray time spent between calls is reported too (`between_calls_s`). Ratio ray / bare is the overhead (goal
   <= 1.25); the per-batch medians give a second ratio less disturbed by a load spike. Two models: `ViT-B-32`
   (random init: the weights do not change the time), a realistic model whose forward dominates, and the demo's
   `mmp-tiny-rn`, where Ray's fixed cost per block weighs most.

2. End-to-end scaling. A shard set of generated JPEGs (short side 256-640 px, ~5% one-word captions for the
   basic filter to drop) is curated with `mmpretrain.curate.pipeline.curate` in a fresh subprocess per run (a fresh
   local Ray each time) with `ray.num_cpus=1` and `=2`, config: basic_filter + embed (`--e2e-model`, one thread
   per actor, so one actor per CPU) + clip_score(top_fraction) + write; the whole set and its first half, so a
   round is 4 runs (their order reversed every other round). Reported: samples/s of the analyse phase
   (summary["seconds"]["analyse"]: read, header checks, decode, transform, embed, features written: the CPU-bound
   stages, but also the actors' start-up and model loads), of the `curate()` call (plus Ray's start and shutdown,
   decide and write) and of the subprocess (plus Python and torch imports), each with the speedup 2 CPUs vs 1
   (goal >= 1.7 for analyse); and the marginal samples/s, (whole - half samples) / (whole - half seconds), which
   leaves the fixed costs out (reported as `fixed_s`), with its speedup. Medians over rounds.

The machine may be shared: the 1-minute load average is recorded before and after every timed measurement
(`--wait-load L` first waits, up to `--wait-max` seconds, for it to drop below L, and measures nothing if it
does not). Writes `--json` (default bench/results/curation_throughput.json; with --quick, only when given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Ray's workers (started by the raylet, which inherits this environment) must import this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

WORDS = ("a the of on in with and at by near under over photo picture image view red blue green yellow black white "
         "small large old new wooden metal glass dog cat bird horse car bus train bike boat house street city beach "
         "mountain river lake forest field garden kitchen table chair window door man woman child people playing "
         "sitting standing walking sunset night snow sky cloud flower tree grass food plate cup").split()
GOALS = {"embed_overhead_max": 1.25, "analyse_speedup_2_vs_1_min": 1.7}


# ------------------------------------------------------------------------------------------------------- inputs

def load1() -> float:
    return round(os.getloadavg()[0], 2)


RAY_PROCESSES = ("ray::", "raylet", "gcs_server")


def _others() -> dict[tuple[int, float], tuple[str, float]]:
    """CPU seconds so far of every process outside this one's tree: (pid, start) -> (name, user + system)."""
    import psutil

    mine = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    seen = {}
    for process in psutil.process_iter(["pid", "name", "create_time", "cpu_times"]):
        info = process.info
        if info["pid"] not in mine and info["cpu_times"] is not None:
            seen[(info["pid"], info["create_time"])] = (info["name"] or "", info["cpu_times"].user +
                                                         info["cpu_times"].system)
    return seen


class Window:
    """The 1-minute load average before and after a measurement, and the CPU seconds other processes used during
    it: the 1-minute load also counts this benchmark's own processes (2 after a 2-thread side), the other-CPU
    figure does not (it misses processes that start and end inside the window, and leaves out Ray processes that
    start inside it, which after our ray.shutdown() may no longer be our children)."""

    def __init__(self) -> None:
        self.load_before, self.before, self.started = load1(), _others(), time.monotonic()

    def close(self) -> dict[str, float]:
        after, seconds = _others(), time.monotonic() - self.started
        used = 0.0
        for key, (name, cpu) in after.items():
            if key in self.before:
                used += cpu - self.before[key][1]
            elif key[1] >= time.time() - seconds - 1 and not name.startswith(RAY_PROCESSES):
                used += cpu
        return {"load_before": self.load_before, "load_after": load1(), "other_cpu_s": round(used, 2),
                "other_cpu_share": round(used / seconds / (os.cpu_count() or 1), 3)}


def synth_jpeg(rng: np.random.Generator, noise: np.ndarray) -> bytes:
    """A photo-like JPEG (short side 256-640 px, aspect 0.6-1.8): a colour gradient, a few flat shapes, mild noise,
    drawn by bench/data_throughput.py's generator with 3-7 shapes, ellipses only (the images measured so far)."""
    from bench.data_throughput import synth_jpeg as photo_like  # imported here: it loads torch and open_clip

    short = int(rng.integers(256, 641))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))
    w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    return photo_like(rng, noise, w, h, None, shapes=(3, 8), rectangles=False)


def synth_caption(rng: np.random.Generator) -> str:
    words = 1 if rng.random() < 0.05 else int(rng.integers(4, 16))  # ~5% for basic_filter(min_caption_words=2)
    return " ".join(rng.choice(WORDS, words))


def synth_samples(n: int, seed: int) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1).normal(0, 8, (1200, 1200, 3)).astype(np.int16)  # >= 640 * 1.8
    return [(synth_jpeg(rng, noise), synth_caption(rng)) for _ in range(n)]


def write_shard_set(folder: Path, shards: int, per_shard: int, seed: int) -> Path:
    """`shards` x `per_shard` generated samples; reused when a previous run left the same set in `folder`."""
    from mmpretrain.data.shard_writer import ShardWriter

    spec = {"shards": shards, "per_shard": per_shard, "seed": seed, "version": 1}
    marker = folder / "bench-set.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return folder
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    with ShardWriter(folder, per_shard, prefix="synth") as writer:
        for i, (jpeg, caption) in enumerate(synth_samples(shards * per_shard, seed)):
            writer.write(f"{i:08d}", jpeg, "jpg", caption)
    marker.write_text(json.dumps(spec))
    return folder


# ---------------------------------------------------------------------------------------- 1. embed overhead

def prepare(spec: str, samples: list[tuple[bytes, str]], batches: int, batch_size: int):
    """The model, and the batches as (pixels (B, C, H, W) float32, captions) and as Embedder's input tables."""
    from mmpretrain.benchmark.models import load_bench_model
    from mmpretrain.curate.analyse import _block
    from mmpretrain.data.decode import load_rgb, open_image

    started = time.perf_counter()
    bench = load_bench_model(spec, label="bench")
    load_s = time.perf_counter() - started
    tensors = [np.asarray(bench.transform(load_rgb(open_image(jpeg))), dtype=np.float32) for jpeg, _ in samples]
    shape = tensors[0].shape
    plain, tables = [], []
    for b in range(batches):
        index = [(b * batch_size + i) % len(samples) for i in range(batch_size)]
        pixels = np.stack([tensors[i] for i in index])
        captions = [samples[i][1] for i in index]
        rows = {"group": [0] * batch_size, "shard": ["bench"] * batch_size,
                "key": [f"{b:04d}-{i:04d}" for i in range(batch_size)], "caption": captions,
                "captions": [1] * batch_size, "width": [shape[2]] * batch_size, "height": [shape[1]] * batch_size,
                "read_reason": [None] * batch_size, "embed": [True] * batch_size}
        plain.append((pixels, captions))
        tables.append(_block(rows, [p.reshape(-1) for p in pixels], int(np.prod(shape)), True))
    return bench, load_s, shape, plain, tables


def bare(bench, plain: list, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    model = bench.model.eval()
    times = []
    with torch.inference_mode():
        for pixels, captions in plain:
            started = time.perf_counter()
            image = model.encode("image", torch.from_numpy(pixels), normalize=True).float()
            text = model.encode("text", bench.tokenizer(captions), normalize=True).float()
            scores = (image * text).sum(-1).numpy()
            times.append(time.perf_counter() - started)
            assert np.isfinite(scores).all()
    return {"warmup_s": times[0], "batch_s": times[1:], "timed_s": sum(times[1:])}


def embedder_in_process(spec: str, shape: tuple[int, ...], tables: list, threads: int) -> dict[str, Any]:
    from mmpretrain.curate.analyse import Embedder

    started = time.perf_counter()
    embedder = Embedder(spec, shape, True, threads, False)
    load_s = time.perf_counter() - started
    times = []
    for table in tables:
        started = time.perf_counter()
        out = embedder(table)
        times.append(time.perf_counter() - started)
        assert out.num_rows == table.num_rows and "clip_score" in out.column_names
    return {"load_s": load_s, "warmup_s": times[0], "batch_s": times[1:], "timed_s": sum(times[1:])}


def stamped_embedder():
    """`Embedder` with the wall-clock start and end of each call appended as two columns (this module runs as
    __main__, so Ray pickles the subclass by value; the base class is imported in the actor as usual)."""
    import pyarrow as pa

    from mmpretrain.curate.analyse import Embedder

    class StampedEmbedder(Embedder):
        def __call__(self, table: pa.Table) -> pa.Table:
            started = time.time()
            out = super().__call__(table)
            ended = time.time()
            n = out.num_rows
            return out.append_column("call_start", pa.array([started] * n, pa.float64())).append_column(
                "call_end", pa.array([ended] * n, pa.float64())).append_column("nice", pa.array([os.nice(0)] * n))

    return StampedEmbedder


def embedder_on_ray(spec: str, shape: tuple[int, ...], tables: list, threads: int, batch_size: int
                    ) -> dict[str, Any]:
    import ray
    import ray.data

    started = time.perf_counter()
    ray.init(num_cpus=threads, include_dashboard=False, logging_level=logging.ERROR)
    init_s = time.perf_counter() - started
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        dataset = ray.data.from_arrow(tables)  # the blocks go to the object store here, before the timing
        dataset = dataset.map_batches(
            stamped_embedder(), batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=threads,
            fn_constructor_kwargs=dict(model_spec=spec, pixel_shape=shape, with_text=True, threads=threads,
                                       use_gpu=False))
        calls: set[tuple[float, float]] = set()
        nice: set[int] = set()
        arrivals, rows = [], 0
        started = time.time()
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            arrivals.append(time.time())
            rows += block.num_rows
            assert "image_emb" in block.column_names and "clip_score" in block.column_names
            calls.update(zip(block.column("call_start").to_pylist(), block.column("call_end").to_pylist()))
            nice.update(block.column("nice").to_pylist())
    finally:
        ray.shutdown()
    expected = sum(t.num_rows for t in tables)
    assert rows == expected, f"ray returned {rows} rows of {expected}"
    stamps = sorted(calls)
    assert len(stamps) == len(tables), f"{len(stamps)} Embedder calls for {len(tables)} batches"
    ends = [end for _, end in stamps]
    in_calls = sum(end - start for start, end in stamps[1:])
    timed = ends[-1] - ends[0]
    return {"actor_nice": sorted(nice), "init_s": init_s, "first_output_s": arrivals[0] - started,
            "whole_s": arrivals[-1] - started,
            "first_call_start_s": stamps[0][0] - started, "warmup_s": stamps[0][1] - stamps[0][0],
            "batch_s": list(np.diff(ends)), "timed_s": timed, "in_calls_s": in_calls,
            "between_calls_s": timed - in_calls,
            "driver_arrival_s": list(np.diff(arrivals))}


def finish(measured: dict[str, Any], window: Window, batches: int, batch_size: int) -> dict[str, Any]:
    measured.update(window.close())
    measured["samples_per_s"] = (batches - 1) * batch_size / measured["timed_s"]
    measured["batch_median_s"] = statistics.median(measured["batch_s"])
    return measured


def in_process_sides(spec: str, batches: int, args: argparse.Namespace) -> dict[str, Any]:
    """The bare and in-process Embedder sides (run in a child process at Ray's worker niceness)."""
    samples = synth_samples(min(batches * args.batch_size, 512), seed=args.seed)
    bench, load_s, shape, plain, tables = prepare(spec, samples, batches, args.batch_size)
    result: dict[str, Any] = {"pixel_shape": list(shape), "bare_model_load_s": load_s, "nice": os.nice(0),
                              "params_m": round(sum(p.numel() for p in bench.model.parameters()) / 1e6, 2)}
    for side in ("bare", "embedder") if args.in_process else ("bare",):
        window = Window()
        print(f"  {spec} {side} (load {window.load_before}, nice {result['nice']})", flush=True)
        if side == "bare":
            measured = bare(bench, plain, args.threads)
        else:
            measured = embedder_in_process(spec, shape, tables, args.threads)
        result[side] = finish(measured, window, batches, args.batch_size)
    return result


def embed_overhead(spec: str, batches: int, args: argparse.Namespace) -> dict[str, Any]:
    """Bare and in-process Embedder in a child process niced like Ray's workers (Ray runs them at
    RAY_worker_niceness, 15 by default, under its nice-0 driver and daemons: on a shared machine the two sides must
    meet other load at the same priority), then Embedder on Ray from this process."""
    result_file = args.workdir / "in-process.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--in-process-child", spec, str(batches),
               str(result_file), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--seed", str(args.seed), *([] if args.in_process else ["--no-in-process"])]
    increment = max(0, args.nice - os.nice(0))
    subprocess.run(command, check=True, preexec_fn=lambda: os.nice(increment))
    result: dict[str, Any] = {"model": spec, "batches": batches, "batch_size": args.batch_size,
                              "timed_batches": batches - 1, **json.loads(result_file.read_text())}
    samples = synth_samples(min(batches * args.batch_size, 512), seed=args.seed)
    _, _, shape, _, tables = prepare(spec, samples, batches, args.batch_size)
    window = Window()
    print(f"  {spec} ray (load {window.load_before})", flush=True)
    result["ray"] = finish(embedder_on_ray(spec, shape, tables, args.threads, args.batch_size), window, batches,
                           args.batch_size)
    base = result["bare"]
    for side in ("embedder", "ray") if args.in_process else ("ray",):
        result[f"{side}_over_bare"] = result[side]["timed_s"] / base["timed_s"]
        result[f"{side}_over_bare_median_batch"] = result[side]["batch_median_s"] / base["batch_median_s"]
    return result


# ------------------------------------------------------------------------------------------- 2. end to end

def e2e_config(path: Path, shards: list[str], out: Path, cpus: int, args: argparse.Namespace) -> Path:
    import yaml

    config = {
        "inputs": shards, "output": str(out), "group_shards": 1, "wave_groups": 1000,
        "ray": {"num_cpus": cpus},
        "stages": [
            {"type": "basic_filter", "min_caption_words": 2},
            {"type": "embed", "model": args.e2e_model, "batch_size": args.e2e_batch_size,
             "rows_per_block": args.e2e_batch_size, "threads_per_actor": 1},
            {"type": "clip_score", "top_fraction": 0.5},
            {"type": "write", "samples_per_shard": 1000},
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def e2e_child(config: str, result: str) -> int:
    """One curation in this (fresh) process: its summary and the time of the curate() call."""
    logging.basicConfig(level=logging.ERROR)
    from mmpretrain.curate.config import load_curate_config
    from mmpretrain.curate.pipeline import curate

    started = time.perf_counter()
    summary = curate(load_curate_config(config), restart=True, progress=False)
    Path(result).write_text(json.dumps({"curate_s": time.perf_counter() - started, "summary": summary}, default=str))
    return 0


def e2e_run(shards: list[str], workdir: Path, cpus: int, name: str, args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    out = workdir / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    config = e2e_config(workdir / f"{name}.yaml", shards, out, cpus, args)
    result = workdir / f"{name}.json"
    window = Window()
    print(f"  {name}: {len(shards)} shards, ray.num_cpus={cpus} (load {window.load_before})", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--e2e-child", str(config), str(result)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    quiet = window.close()
    if done.returncode != 0:
        raise RuntimeError(f"curation run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    child = json.loads(result.read_text())
    summary = child["summary"]
    samples = int(summary["samples"])
    seconds = summary["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return {"cpus": cpus, "shards": len(shards), **quiet, "samples": samples,
            "kept": summary["kept"], "dropped": summary["dropped"], "seconds": seconds,
            "curate_s": child["curate_s"], "process_s": wall,
            "analyse_samples_per_s": samples / seconds["analyse"], "curate_samples_per_s": samples / child["curate_s"],
            "process_samples_per_s": samples / wall}


def _time_of(run: dict[str, Any], key: str) -> float:
    return run["seconds"]["analyse"] if key == "analyse" else run[f"{key}_s"]


def e2e_scaling(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Each round curates the whole set and its first half with 1 and 2 CPUs (the order reversed every other
    round). The whole set's times give the samples/s as a user sees them; the difference between the whole set and
    the half gives the marginal samples/s, without the fixed costs (Ray's and the actors' start-up, model loads)."""
    folder = write_shard_set(workdir / "shards", args.e2e_shards, args.e2e_per_shard, args.seed)
    from mmpretrain.data.shards import expand_shards

    full = expand_shards(str(folder))
    half = full[:len(full) // 2]
    plan = [(1, "full"), (2, "full"), (2, "half"), (1, "half")]
    runs = []
    for r in range(args.e2e_rounds):
        for cpus, size in plan if r % 2 == 0 else plan[::-1]:
            runs.append({"round": r, "set": size, **e2e_run(full if size == "full" else half, workdir, cpus,
                                                              f"round{r}-{size}-cpu{cpus}", args)})
    result: dict[str, Any] = {"model": args.e2e_model, "shards": len(full), "per_shard": args.e2e_per_shard,
                              "half_shards": len(half), "batch_size": args.e2e_batch_size, "rounds": args.e2e_rounds,
                              "runs": runs}

    def pick(cpus: int, size: str) -> list[dict[str, Any]]:
        return [run for run in runs if run["cpus"] == cpus and run["set"] == size]

    samples = {size: pick(1, size)[0]["samples"] for size in ("full", "half")}
    for key in ("analyse", "curate", "process"):
        entry: dict[str, Any] = {}
        for cpus in (1, 2):
            whole = statistics.median(_time_of(run, key) for run in pick(cpus, "full"))
            part = statistics.median(_time_of(run, key) for run in pick(cpus, "half"))
            extra = whole - part
            entry[f"cpu{cpus}_s"] = whole
            entry[f"cpu{cpus}_half_s"] = part
            entry[f"cpu{cpus}_samples_per_s"] = samples["full"] / whole
            rate = (samples["full"] - samples["half"]) / extra if extra > 0 else None
            entry[f"cpu{cpus}_marginal_samples_per_s"] = rate
            entry[f"cpu{cpus}_fixed_s"] = whole - samples["full"] / rate if rate else None
        entry["speedup"] = entry["cpu1_s"] / entry["cpu2_s"]
        entry["speedup_per_round"] = [_time_of(a, key) / _time_of(b, key)
                                      for a, b in zip(pick(1, "full"), pick(2, "full"))]
        one, two = entry["cpu1_marginal_samples_per_s"], entry["cpu2_marginal_samples_per_s"]
        entry["marginal_speedup"] = two / one if one and two else None
        result[key] = entry
    return result


# ------------------------------------------------------------------------------------------------- report

def machine(threads: int) -> dict[str, Any]:
    import ray
    import torch

    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "torch_threads": threads}


def command() -> str:
    script = Path(sys.argv[0]).resolve()
    return " ".join(["python", str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0],
                     *sys.argv[1:]])


def wait_quiet(limit: Optional[float], longest: float) -> list[float]:
    seen = [load1()]
    if limit is None:
        return seen
    deadline = time.monotonic() + longest
    while seen[-1] >= limit and time.monotonic() < deadline:
        print(f"waiting for the 1-minute load to drop below {limit} (now {seen[-1]})", flush=True)
        time.sleep(15)
        seen.append(load1())
    return seen


def table(report: dict[str, Any]) -> str:
    lines = ["Embed stage: Ray's overhead over the bare forward (timed batches 2..N; ratio = time / bare time)",
             f"{'model':<12} {'side':<9} {'samples/s':>10} {'timed s':>8} {'ratio':>6} {'median-batch ratio':>19} "
             f"{'load':>5} {'others':>6}"] if report["embed"] else []
    for entry in report["embed"]:
        for side in ("bare", "embedder", "ray"):
            if side not in entry:
                continue
            m = entry[side]
            ratio = f"{entry[f'{side}_over_bare']:.3f}" if side != "bare" else "1"
            median = f"{entry[f'{side}_over_bare_median_batch']:.3f}" if side != "bare" else "1"
            lines.append(f"{entry['model']:<12} {side:<9} {m['samples_per_s']:>10.1f} {m['timed_s']:>8.2f} "
                         f"{ratio:>6} {median:>19} {m['load_before']:>5} {m['other_cpu_share']:>6.0%}")
        ray = entry["ray"]
        lines.append(f"{'':<12} ray: {ray['between_calls_s']:.2f} s of the timed {ray['timed_s']:.2f} s between "
                     f"Embedder calls; not in the ratio: actor start + model load {ray['first_call_start_s']:.1f} s, "
                     f"first output at {ray['first_output_s']:.1f} s, whole execution {ray['whole_s']:.1f} s "
                     f"(bare: load {entry['bare_model_load_s']:.1f} s + warm-up {entry['bare']['warmup_s']:.1f} s)")
    e2e = report.get("e2e")
    if e2e:
        samples = next(run["samples"] for run in e2e["runs"] if run["set"] == "full")
        lines += ["", f"End to end: {samples} samples in {e2e['shards']} shards (and the first {e2e['half_shards']}), "
                      f"embed {e2e['model']}, medians of {e2e['rounds']} round(s); marginal: the whole set less "
                      "the half, without fixed costs",
                  f"{'phase':<36} {'1 CPU /s':>9} {'2 CPUs /s':>10} {'speedup':>8}   {'marginal 1 / 2 CPUs /s':>22} "
                  f"{'speedup':>8} {'fixed s 1 / 2':>14}"]
        names = {"analyse": "analyse (read+decode+embed)", "curate": "curate() (+ray start, decide, write)",
                 "process": "whole subprocess (+imports)"}

        def number(value: Optional[float], digits: int = 1) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        for key, name in names.items():
            m = e2e[key]
            marginal = f"{number(m['cpu1_marginal_samples_per_s'])} / {number(m['cpu2_marginal_samples_per_s'])}"
            fixed = f"{number(m['cpu1_fixed_s'])} / {number(m['cpu2_fixed_s'])}"
            lines.append(f"{name:<36} {m['cpu1_samples_per_s']:>9.1f} {m['cpu2_samples_per_s']:>10.1f} "
                         f"{m['speedup']:>8.2f}   {marginal:>22} {number(m['marginal_speedup'], 2):>8} {fixed:>14}")
        lines.append("runs (set, CPUs: load before, others' CPU share): " + ", ".join(
            f"{r['set']} {r['cpus']}: {r['load_before']}, {r['other_cpu_share']:.0%}" for r in e2e["runs"]))
    lines.append("load: 1-minute average before the measurement, this benchmark's own work included; others: the "
                 "machine's CPU used by other processes during it")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one round")
    parser.add_argument("--embed", nargs="*", default=None, metavar="SPEC@BATCHES",
                        help="models for the overhead measurement and their batch counts (default ViT-B-32@4 "
                             "mmp-tiny-rn@24; the first batch is the warm-up)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, and Ray's CPUs in 1.")
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip the in-process Embedder side")
    parser.add_argument("--no-embed", dest="embed_on", action="store_false", help="skip the embed overhead part")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end scaling runs")
    parser.add_argument("--e2e-model", default="mmp-tiny-rn")
    parser.add_argument("--e2e-shards", type=int, default=None, help="default 12")
    parser.add_argument("--e2e-per-shard", type=int, default=None, help="default 250")
    parser.add_argument("--e2e-batch-size", type=int, default=256, help="embed batch_size and rows_per_block")
    parser.add_argument("--e2e-rounds", type=int, default=None,
                        help="default 1 (4 runs: the set and its half, 1 and 2 CPUs)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmp-curation-throughput",
                        help="generated shards (kept for the next run) and curation outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-load", type=float, default=None,
                        help="first wait until the 1-minute load average is below this; exit 3 without "
                             "measuring if it is not within --wait-max")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for --wait-load at most")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--nice", type=int, default=int(os.environ.get("RAY_worker_niceness", 15)),
                        help="niceness of the bare and in-process sides: Ray's worker niceness (default 15)")
    parser.add_argument("--e2e-child", nargs=2, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--in-process-child", nargs=3, metavar=("SPEC", "BATCHES", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.e2e_child:
        return e2e_child(*args.e2e_child)
    if args.in_process_child:
        logging.basicConfig(level=logging.ERROR)
        spec, batches, result = args.in_process_child
        Path(result).write_text(json.dumps(in_process_sides(spec, int(batches), args), default=float))
        return 0
    quick = args.quick
    args.embed = args.embed if args.embed is not None else (
        ["ViT-B-32@3", "mmp-tiny-rn@6"] if quick else ["ViT-B-32@4", "mmp-tiny-rn@24"])
    args.batch_size = args.batch_size or (16 if quick else 64)
    args.e2e_shards = args.e2e_shards or (4 if quick else 12)
    args.e2e_per_shard = args.e2e_per_shard or (64 if quick else 250)
    args.e2e_rounds = args.e2e_rounds or 1
    if args.json is None and not quick:
        args.json = REPO / "bench" / "results" / "curation_throughput.json"
    args.workdir.mkdir(parents=True, exist_ok=True)

    logging.basicConfig(level=logging.ERROR)
    waited = wait_quiet(args.wait_load, args.wait_max)
    if args.wait_load is not None and waited[-1] >= args.wait_load:
        print(f"the 1-minute load stayed at or above {args.wait_load} for {args.wait_max:.0f} s (last {waited[-1]}): "
              "no measurement taken; run again later", flush=True)
        return 3
    started = time.time()
    report: dict[str, Any] = {
        "command": command(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(args.threads),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("e2e_child", "in_process_child")},
        "goals": GOALS,
        "load_at_start": waited[-1], "load_wait": waited,
        "timing": ("embed: times of batches 2..N (batch 1 is the warm-up); ray's time is from the end of the "
                   "actor's first Embedder call to the end of its last (wall-clock stamps added by a subclass, since "
                   "the driver receives blocks in bursts), so actor start-up, model load and batch 1 are left out "
                   "(ray.first_call_start_s, first_output_s, whole_s); e2e: summary seconds.analyse, curate() and "
                   "the subprocess per run, each run a fresh subprocess and local Ray"),
        "embed": [],
    }
    print(f"1. embed overhead ({args.threads} threads, batch {args.batch_size})", flush=True)
    for entry in args.embed if args.embed_on else []:
        spec, _, count = entry.rpartition("@") if "@" in entry else (entry, "", "8")
        report["embed"].append(embed_overhead(spec, max(3, int(count)), args))
    if args.e2e:
        print("2. end to end, ray.num_cpus 1 and 2", flush=True)
        report["e2e"] = e2e_scaling(args, args.workdir)
    report["seconds"] = round(time.time() - started, 1)
    report["load_at_end"] = load1()
    report["summary"] = {
        **{f"embed_overhead_{e['model']}": round(e["ray_over_bare"], 3) for e in report["embed"]},
        **({"analyse_speedup_2_vs_1": round(report["e2e"]["analyse"]["speedup"], 3),
            "analyse_marginal_speedup_2_vs_1": report["e2e"]["analyse"]["marginal_speedup"],
            "curate_speedup_2_vs_1": round(report["e2e"]["curate"]["speedup"], 3)} if args.e2e else {}),
    }
    print()
    print(table(report))
    if args.json:
        from mmpretrain.engine.checkpoint import write_atomically

        args.json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=1, default=float)
        write_atomically(args.json, lambda tmp: tmp.write_text(text + "\n"))
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
