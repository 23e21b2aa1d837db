"""`mmpretrain curate`: the three phases over an output folder that is also the run's state.

    OUT/curation.json            what was planned: inputs (with sizes), groups, a fingerprint per phase
    OUT/work/features/wave-N/    analyse phase, one folder per wave of groups, renamed into place when whole
    OUT/work/eval/<hash>/        the evaluation sets' image embeddings (decontamination)
    OUT/work/failures/*.json     input shards that broke, and how many samples they lost
    OUT/work/decided.json        decide phase: the fitted stages and the counts; OUT/decisions/ the decision table
    OUT/work/groups/N.json       write phase: group N's commit record; OUT/shards/*.tar + sizes.json the output
    OUT/summary.json             counts per stage and reason, output size, times

A rerun continues: finished waves, the decision table and committed groups are kept. A changed config redoes the
phases whose inputs changed (analysis only with --restart, since it is the expensive one); changed input shards
are refused. Ray is started locally (the config's CPUs and memory, no dashboard) unless an address is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mmpretrain.curate.analyse import Fault, analyse
from mmpretrain.curate.config import CurateConfig, RayResources
from mmpretrain.curate.decide import decide
from mmpretrain.curate.stages import Embed, Stage
from mmpretrain.curate.table import embeddings
from mmpretrain.curate.write import read_record, write_group
from mmpretrain.data.shards import expand_shards, update_sizes
from mmpretrain.data.skips import SampleLimits
from mmpretrain.engine.checkpoint import write_atomically
from mmpretrain.engine.runlock import LOCK_NAME, RunLock
from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)
STATE_FILE = "curation.json"
STATE_VERSION = 1


class Layout:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.state = out / STATE_FILE
        self.work = out / "work"
        self.features = self.work / "features"
        self.eval = self.work / "eval"
        self.failures = self.work / "failures"
        self.groups = self.work / "groups"
        self.decided = self.work / "decided.json"
        self.decisions = out / "decisions"
        self.shards = out / "shards"
        self.summary = out / "summary.json"


def plan_groups(inputs: Sequence[str], group_shards: int) -> list[list[str]]:
    """Input shards in config order (each set sorted), each once, cut into groups of `group_shards`."""
    shards = list(dict.fromkeys(s for spec in inputs for s in expand_shards(spec)))
    return [shards[i:i + group_shards] for i in range(0, len(shards), group_shards)]


_MODEL_FILES = ("*.pt", "*.safetensors", "*.bin", "open_clip_config.json", "mmpretrain_config.json",
                "*.manifest.json")


def _model_identity(spec: str) -> Any:
    """Sizes and times of the model's weight and config files, so retraining the model at the same path counts as
    a change (and an eval_results.json written beside it does not)."""
    path = Path(spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else spec)
    if path.is_file():
        return [path.name, path.stat().st_size, path.stat().st_mtime_ns]
    if path.is_dir():
        files = {p for pattern in _MODEL_FILES for p in path.rglob(pattern) if p.is_file() and ".tmp" not in p.name}
        return sorted([str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files)
    return spec


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1, default=str)))


def check_output(layout: Layout, restart: bool) -> None:
    """The output folder is new, empty, or an earlier curation's (then --restart may clear it); never anything else."""
    out = layout.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file, not a folder")
    if out.is_dir() and not layout.state.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no {STATE_FILE}: choose an empty or new folder"
                          + (" (--restart only clears a curation's own output)" if restart else ""))


def open_state(config: CurateConfig, layout: Layout, groups: list[list[str]], restart: bool) -> dict[str, Any]:
    """Start a new output folder or continue the one there; redo what a changed config invalidates. Called after
    every input, the model and the evaluation sets were checked, so a typo costs nothing here."""
    embed = config.embed
    fingerprints = config.fingerprints()
    model = _model_identity(embed.model) if embed else None
    fingerprints["analyse"] = hashlib.sha256(json.dumps([fingerprints["analyse"], model], default=str).encode()
                                             ).hexdigest()[:16]
    inputs = {s: os.path.getsize(s) for group in groups for s in group}
    state = {"version": STATE_VERSION, "fingerprints": fingerprints, "inputs": inputs, "groups": groups}
    if restart and layout.state.exists():
        _remove(layout.work, layout.decisions, layout.shards, layout.summary, layout.state)
    if layout.state.exists():
        old = json.loads(layout.state.read_text())
        changed = sorted(s for s in set(old.get("inputs", {})) | set(inputs) if old["inputs"].get(s) != inputs.get(s))
        if changed:
            raise ConfigError(f"{layout.out} was curated from other input shards ({len(changed)} differ, e.g. "
                              f"{changed[0]}); use another output folder, or --restart to start over")
        previous = old.get("fingerprints", {})
        if previous.get("analyse") != fingerprints["analyse"]:
            raise ConfigError(f"{layout.out} was analysed with another model or reader settings; rerunning would "
                              "embed everything again: use another output folder, or --restart")
        if previous.get("decide") != fingerprints["decide"]:
            log.warning("curate: the filter stages changed since the last run: deciding again, rewriting the output")
            _remove(layout.decided, layout.decisions, layout.groups, layout.shards, layout.summary,
                    *layout.work.glob("dedup-*"))
        elif previous.get("write") != fingerprints["write"]:
            log.warning("curate: the written stages changed since the last run: rewriting the output shards")
            _remove(layout.groups, layout.shards, layout.summary)
    _write_json(layout.state, state)
    return state


def _remove(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def ray_session(resources: RayResources, address: Optional[str]) -> Iterator[None]:
    """A local Ray (dashboard off) or the cluster at `address`; an already-initialised Ray is used as it is."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray; a cluster sets its own
    if ray.is_initialized():
        yield
        return
    address = address or resources.address
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, include_dashboard=False,
                 object_store_memory=resources.object_store_mb * 2**20 if resources.object_store_mb else None,
                 logging_level=logging.WARNING)
    # Ray Data's per-execution INFO lines repeat what its progress bars show; warnings and errors still print.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def _driver_fault(phase: str, done: int) -> None:
    """Test hook: MMP_CURATE_FAULT=kill_driver:<phase>:<n> SIGKILLs the driver after n units of a phase."""
    kind, _, rest = os.environ.get("MMP_CURATE_FAULT", "").partition(":")
    at_phase, _, count = rest.partition(":")
    if kind == "kill_driver" and at_phase == phase and count.isdigit() and done == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def _shares(embed: Embed) -> tuple[int, float, float]:
    """Actors, and CPUs per actor and per read task.

    On CPUs, Ray Data fuses the read task into the actor when their resources match (and they are made to match):
    each actor then reads, decodes and embeds its own shards and no pixel crosses the object store, so there is
    one actor per CPU. On GPUs the reads stay CPU tasks feeding GPU actors, with a CPU kept for them.
    """
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if embed.gpus_per_actor > 0:
        if gpus < embed.gpus_per_actor:
            raise ConfigError(f"embed: gpus_per_actor={embed.gpus_per_actor} but the Ray cluster has {gpus:g} GPUs")
        actors = embed.actors or max(1, int(gpus / embed.gpus_per_actor))
        actor_cpus = min(float(embed.threads_per_actor), max(0.01, (cpus - 1) / actors))
        return actors, actor_cpus, min(1.0, max(0.01, cpus - actors * actor_cpus))
    actors = embed.actors or max(1, int(cpus // embed.threads_per_actor))
    actor_cpus = min(float(embed.threads_per_actor), cpus / actors)
    return actors, actor_cpus, actor_cpus


def _transform(embed: Embed):
    """The model's eval transform, loading the model once here: a bad `model` fails before any Ray work."""
    from mmpretrain.benchmark.models import load_bench_model

    try:
        return load_bench_model(embed.model, label="curate").transform
    except ConfigError as e:
        raise ConfigError(f"embed: {str(e).replace('--model ', 'model ')}"
                          + (" (train it first: `mmpretrain demo`)" if embed.model.rstrip("/") == "runs/demo" else "")
                          ) from None


def _eval_dir(layout: Layout, spec: str) -> Path:
    """Where an evaluation set's embeddings are kept: named by the spec and its shards' sizes (the model is the
    analyse fingerprint's: another model is refused or --restart clears work/)."""
    shards = expand_shards(spec)
    identity = json.dumps([spec, [[s, os.path.getsize(s)] for s in shards]])
    return layout.eval / hashlib.sha1(identity.encode()).hexdigest()[:12]


def _load_eval(layout: Layout, specs: Sequence[str]) -> np.ndarray:
    parts = [p for spec in specs for p in sorted(_eval_dir(layout, spec).glob("*.parquet"))]
    tables = [pq.read_table(p, columns=["read_reason", "image_emb"]) for p in parts]
    tables = [t.filter(pa.compute.is_null(t.column("read_reason"))) for t in tables]
    return np.concatenate([embeddings(t) for t in tables]) if tables else np.zeros((0, 1), np.float32)


def curate(config: CurateConfig, address: Optional[str] = None, restart: bool = False,
           progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a curation; returns the summary also written to OUT/summary.json."""
    layout = Layout(Path(config.output))
    if config.demo:
        _make_demo(config.demo)
    # Everything a typo could break is checked before the output folder is touched: inputs, evaluation sets,
    # the output folder itself, the model (loaded here once for its transform).
    groups = plan_groups(config.inputs, config.group_shards)
    for spec in _eval_specs(config.stages):
        expand_shards(spec)
    check_output(layout, restart)
    embed = config.embed
    early_waves = [groups[i:i + config.wave_groups] for i in range(0, len(groups), config.wave_groups)]
    if embed is not None and (restart or not layout.state.exists() or any(
            not (layout.features / f"wave-{i:05d}").is_dir() for i in range(len(early_waves)))
            or any(not _eval_dir(layout, spec).is_dir() for spec in _eval_specs(config.stages))):
        transform = _transform(embed)
    else:
        transform = None
    lock = RunLock(layout.out).acquire()  # one curation per output folder at a time
    try:
        return _curate(config, layout, groups, transform, address, restart, progress)
    finally:
        lock.release()


def _curate(config: CurateConfig, layout: Layout, groups: list[list[str]], transform: Any, address: Optional[str],
            restart: bool, progress: bool) -> dict[str, Any]:
    import ray.data

    open_state(config, layout, groups, restart)
    embed = config.embed
    stages = [s for s in config.stages if s.role == "filter"]
    transforms = [s for s in config.stages if s.role == "transform"]
    embed_at = next((i for i, s in enumerate(config.stages) if s.role == "embed"), None)
    prefilters = []
    for stage in config.stages[:embed_at or 0]:  # the leading per-sample filters: decided before any decoding
        if stage.role != "filter" or not stage.per_sample:
            break
        prefilters.append(stage)
    limits = SampleLimits(max_member_bytes=config.max_member_bytes, max_pixels=SampleLimits().max_pixels, min_side=1,
                          max_aspect_ratio=float("inf"))
    seconds: dict[str, float] = {}
    waves = [groups[i:i + config.wave_groups] for i in range(0, len(groups), config.wave_groups)]
    pending = [(i, wave) for i, wave in enumerate(waves) if not (layout.features / f"wave-{i:05d}").is_dir()]
    needs_model = bool(pending) or any(not _eval_dir(layout, spec).is_dir() for spec in _eval_specs(config.stages))
    if embed is not None and needs_model and transform is None:  # --restart or a changed state since the check
        transform = _transform(embed)
    with ray_session(config.ray, address):
        ray.data.DataContext.get_current().enable_progress_bars = progress
        started = time.monotonic()
        if pending or needs_model:
            actors, actor_cpus, read_cpus = _shares(embed) if embed is not None else (0, 1.0, 1.0)
            fault = Fault.from_env()
            for done, (index, wave) in enumerate(pending, 1):
                first = sum(len(w) for w in waves[:index])
                items = [{"group": first + g, "shard": s} for g, group in enumerate(wave) for s in group]
                if progress:
                    tqdm.write(f"curate: analysing wave {index + 1}/{len(waves)} ({len(items)} shards)")
                analyse(items, layout.features / f"wave-{index:05d}", embed, prefilters, True, layout.failures,
                        actors, transform, limits, fault, read_cpus, actor_cpus)
                _driver_fault("analyse", done)
            for spec in _eval_specs(config.stages):
                if not _eval_dir(layout, spec).is_dir():
                    items = [{"group": -1, "shard": s} for s in expand_shards(spec)]
                    analyse(items, _eval_dir(layout, spec), embed, [], False, layout.work / "eval-failures", actors,
                            transform, limits, fault, read_cpus, actor_cpus)
        seconds["analyse"] = time.monotonic() - started
        parts = sorted(str(p) for p in layout.features.glob("wave-*/*.parquet"))
        started = time.monotonic()
        if layout.decided.is_file() and layout.decisions.is_dir():
            decided = json.loads(layout.decided.read_text())
        else:
            decided = decide(parts, stages, layout.decisions, layout.work, config.seed,
                             lambda specs: _load_eval(layout, specs), progress)
            _write_json(layout.decided, decided)
        seconds["decide"] = time.monotonic() - started
        started = time.monotonic()
        records = _write_all(config, layout, groups, transforms, progress)
        seconds["write"] = time.monotonic() - started
    update_sizes(layout.shards, {name: n for r in records for name, n in r["counts"].items()})
    summary = _summary(config, layout, groups, decided, records, seconds)
    _write_json(layout.summary, summary)
    return summary


def _eval_specs(stages: Sequence[Stage]) -> list[str]:
    return [spec for s in stages for spec in getattr(s, "eval", [])]


def _write_all(config: CurateConfig, layout: Layout, groups: list[list[str]], transforms: Sequence[Stage],
               progress: bool) -> list[dict[str, Any]]:
    import ray

    layout.shards.mkdir(parents=True, exist_ok=True)
    records: dict[int, dict[str, Any]] = {}
    for group in range(len(groups)):
        record = read_record(layout.work, group, layout.shards)
        if record is not None:
            records[group] = record
    task = ray.remote(num_cpus=1, max_retries=3)(write_group)
    write_stage = config.write
    pending = {task.remote(g, f"wave-{g // config.wave_groups:05d}", groups[g], str(layout.decisions), str(layout.shards), str(layout.work), write_stage,
                           list(transforms), config.max_member_bytes): g
               for g in range(len(groups)) if g not in records}
    done = 0
    with tqdm(total=len(groups), initial=len(records), desc="writing", unit="group", disable=not progress) as bar:
        waiting = list(pending)
        while waiting:
            finished, waiting = ray.wait(waiting, num_returns=1)
            record = ray.get(finished[0])
            records[record["group"]] = record
            bar.update(1)
            done += 1
            _driver_fault("write", done)
    return [records[g] for g in sorted(records)]


def _summary(config: CurateConfig, layout: Layout, groups: list[list[str]], decided: dict[str, Any],
             records: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    failures = [json.loads(p.read_text()) for p in sorted(layout.failures.glob("*.json"))]
    return {
        "config": config.source, "inputs": {"shards": sum(len(g) for g in groups), "groups": len(groups)},
        "samples": decided["samples"], "kept": decided["kept"], "dropped": decided["dropped"],
        "stages": decided["stages"], "shard_failures": failures,
        "output": {"shards": sum(len(r["files"]) for r in records), "samples": sum(r["samples"] for r in records),
                   "folder": str(layout.shards)},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['samples']} samples read from {summary['inputs']['shards']} shards; "
             f"{summary['kept']} kept ({summary['kept'] / max(1, summary['samples']):.1%})"]
    for stage, reasons in summary["dropped"].items():
        for reason, count in sorted(reasons.items()):
            lines.append(f"  dropped by {stage:<14} {reason:<22} {count}")
    for failure in summary["shard_failures"]:
        lines.append(f"  shard {failure['shard']}: {failure['reason']} ({failure['lost']} samples lost)")
    out = summary["output"]
    lines.append(f"wrote {out['samples']} samples in {out['shards']} shards to {out['folder']}")
    return "\n".join(lines)


def _make_demo(demo: dict[str, str]) -> None:
    from mmpretrain.data.demo_data import generate_demo_data

    root = demo.get("root", "data/demo")
    generate_demo_data(root)
    noisy = demo.get("noisy")
    if noisy and not (Path(noisy) / "truth.json").is_file():
        from mmpretrain.curate.noisy_demo import make_noisy_demo

        make_noisy_demo(Path(root), Path(noisy), seed=int(demo.get("seed", 0)))
